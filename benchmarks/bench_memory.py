"""Memory: the bytes SenCache keeps between steps, per CFG branch, against one latent and one hidden state.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py

For each model size the script generates with SenCache on and, at every step's end (the pipeline's
``callback_on_step_end``), reads the live cache state of the session:

* per branch (``session.cache_state()``: ``residual`` / ``encoder_residual`` / ``has_residual``): the block-stack
  residual of the video stream (B × tokens × hidden), the text-stream residual if the blocks return one, flags;
* shared by the branches (the rule state: ``x_ref``, a copy of the latent at the last refresh, and the
  per-sample reference numbers).

The largest value over the steps is reported, in bytes and as multiples of one latent (the transformer's
input, B × C × F × H × W) and of one hidden state (B × tokens × hidden, what the stack passes between blocks).
With ``offload_residuals`` (an option of ``SenCacheConfig``/``enable`` when this version has it; reported as
"not available" otherwise) the same is measured again, with the bytes split by device.

Peak RSS: for the demo size (``--rss-size``), each variant runs in a fresh process that first generates once
uncached (so the allocator and the model are warm), then runs the variant; the growth of the peak RSS
(``ru_maxrss``) during the variant is reported, next to the same growth for a second uncached generation
(the noise floor). ``tracemalloc`` in the same child measures the Python-side allocations (trace records,
bookkeeping), which torch's tensor memory does not pass through.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

NAME = "memory"
EPS = 1.0  # with the synthetic profile below: some steps reuse, some compute (the state is the same either way)


def offload_option() -> str | None:
    """Where this version accepts ``offload_residuals``: "config", "enable", or None."""
    import sencache
    from sencache import SenCacheConfig

    if "offload_residuals" in inspect.signature(SenCacheConfig).parameters:
        return "config"
    if "offload_residuals" in inspect.signature(sencache.enable).parameters:
        return "enable"
    return None


def make_config(profile, offload: bool):
    from sencache import SenCacheConfig

    kw = {"offload_residuals": True} if offload and offload_option() == "config" else {}
    return SenCacheConfig(profile, eps=EPS, max_reuse=3, final_steps=1, **kw)


def enable(pipe, config, offload: bool):
    import sencache

    kw = {"offload_residuals": True} if offload and offload_option() == "enable" else {}
    return sencache.enable(pipe, config, **kw)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    if hasattr(obj, "__dict__"):
        return [t for v in vars(obj).values() for t in _tensors(v)]
    return []


def _bytes(tensors, device=None) -> int:
    seen, total = set(), 0
    for t in tensors:
        if device is not None and t.device.type != device:
            continue
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def snapshot(session, compute_device: str) -> dict:
    """Bytes of the session's live cache state, per branch and shared."""
    state = session.cache_state()
    residual, encoder_residual, has_residual = state["residual"], state["encoder_residual"], state["has_residual"]
    branches = {}
    for branch in sorted(set(residual) | set(encoder_residual) | set(has_residual)):
        parts = {"residual": _tensors(residual.get(branch)),
                 "encoder_residual": _tensors(encoder_residual.get(branch)),
                 "flags": _tensors(has_residual.get(branch))}
        everything = [t for ts in parts.values() for t in ts]
        branches[branch] = {
            **{f"{k}_bytes": _bytes(v) for k, v in parts.items()},
            "total_bytes": _bytes(everything),
            "on_compute_device_bytes": _bytes(everything, compute_device),
            "devices": sorted({t.device.type for t in everything}),
        }
    rule_state = _tensors(state["rule_state"])
    shared = rule_state + _tensors(state["reuse_run"])
    x_ref = getattr(state["rule_state"], "x_ref", None)
    return {
        "branches": branches,
        "shared_bytes": _bytes(shared),
        "shared_on_compute_device_bytes": _bytes(shared, compute_device),
        "x_ref_bytes": _bytes([x_ref]) if isinstance(x_ref, torch.Tensor) else 0,
        "total_bytes": _bytes([t for b in branches for t in (_tensors(residual.get(b)) +
                                                              _tensors(encoder_residual.get(b)) +
                                                              _tensors(has_residual.get(b)))] + shared),
    }


def _merge_max(a: dict | None, b: dict) -> dict:
    """Elementwise maximum of two snapshots (the peak over steps)."""
    if a is None:
        return b
    out = {}
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = _merge_max(a.get(k) or {}, v) if a.get(k) else v
        elif isinstance(v, (int, float)) and isinstance(a.get(k), (int, float)):
            out[k] = max(a[k], v)
        elif isinstance(v, list):
            out[k] = sorted(set(v) | set(a.get(k) or []))
        else:
            out[k] = v
    return out


def measure_state(pipe, profile, steps: int, offload: bool) -> dict:
    from sencache.adapter.hooks import quiet_sencache
    from sencache.runtime.generation import generate

    device = next(pipe.transformer.parameters()).device.type
    session = enable(pipe, make_config(profile, offload), offload)
    peak = {"snap": None}

    def on_step_end(p, i, t, kwargs):
        peak["snap"] = _merge_max(peak["snap"], snapshot(session, device))
        return {}

    try:
        with quiet_sencache():
            generate(pipe, common.PROMPT, 0, num_inference_steps=steps, callback_on_step_end=on_step_end)
        summary = session.summary()
    finally:
        pipe_disable(pipe)
    return {**peak["snap"], "nfe": summary["nfe"], "steps": steps, "compute_device": device}


def pipe_disable(pipe):
    import sencache

    sencache.disable(pipe)


def measure_size(size: str, steps: int, model_dir=None) -> dict:
    from bench_overhead import synthetic_profile

    pipe, info = common.load_model(size, model_dir)
    calls = common.capture_calls(pipe, 2)
    latent = calls[0].kwargs["hidden_states"]
    t = pipe.transformer
    p = t.config.patch_size
    tokens = (latent.shape[2] // p[0]) * (latent.shape[3] // p[1]) * (latent.shape[4] // p[2])
    hidden = t.config.num_attention_heads * t.config.attention_head_dim
    latent_bytes = latent.numel() * latent.element_size()
    hidden_bytes = latent.shape[0] * tokens * hidden * latent.element_size()
    profile = synthetic_profile(pipe, steps)  # state sizes do not depend on the profile's values
    out = {"model": info, "tokens": tokens, "hidden_size": hidden, "batch": int(latent.shape[0]),
           "latent_shape": list(latent.shape), "latent_bytes": latent_bytes, "hidden_bytes": hidden_bytes,
           "weights_bytes": sum(q.numel() * q.element_size() for q in t.parameters())}
    variants = {"default": measure_state(pipe, profile, steps, offload=False)}
    if offload_option() is not None:
        variants["offload_residuals"] = measure_state(pipe, profile, steps, offload=True)
    for v in variants.values():
        for b in v["branches"].values():
            b["x_latent"] = b["total_bytes"] / latent_bytes
            b["x_hidden"] = b["total_bytes"] / hidden_bytes
        v["shared_x_latent"] = v["shared_bytes"] / latent_bytes
        v["total_x_latent"] = v["total_bytes"] / latent_bytes
        v["total_x_hidden"] = v["total_bytes"] / hidden_bytes
    out["variants"] = variants
    out["offload"] = "available" if "offload_residuals" in variants else "not available"
    return out


# --------------------------------------------------------------------------------------------------
# peak RSS, one fresh process per variant
# --------------------------------------------------------------------------------------------------


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def rss_child(variant: str, size: str, steps: int, model_dir=None) -> dict:
    """Run in a fresh process: warm uncached generation, then ``variant``; peak-RSS growth and tracemalloc peak."""
    import tracemalloc

    from bench_overhead import synthetic_profile

    import sencache
    from sencache.adapter.hooks import quiet_sencache
    from sencache.runtime.generation import generate

    pipe, _ = common.load_model(size, model_dir)
    profile = synthetic_profile(pipe, steps)
    generate(pipe, common.PROMPT, 0, num_inference_steps=steps)  # warm: model, allocator, first-call caches
    before = _maxrss_bytes()
    session = None
    if variant != "uncached":
        session = enable(pipe, make_config(profile, variant == "offload_residuals"), variant == "offload_residuals")
    tracemalloc.start()
    try:
        with quiet_sencache():
            generate(pipe, common.PROMPT, 0, num_inference_steps=steps)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if session is not None:
            sencache.disable(pipe)
    return {"variant": variant, "peak_rss_before": before, "peak_rss_after": _maxrss_bytes(),
            "peak_rss_growth": _maxrss_bytes() - before, "python_alloc_peak": py_peak}


def measure_rss(variants: list[str], size: str, steps: int, model_dir=None, in_process: bool = False) -> dict:
    out = {}
    for v in variants:
        if in_process:
            out[v] = rss_child(v, size, steps, model_dir)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", v, "--rss-size", size,
               "--steps", str(steps)] + (["--model", model_dir] if model_dir else [])
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            out[v] = {"variant": v, "error": tail[0]}
            continue
        out[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------------------------------


def _kib(n) -> str:
    return "–" if n is None else f"{n / 1024:.1f}"


def table(sizes: dict, rss: dict) -> str:
    rows = []
    for name, r in sizes.items():
        for vname, v in r["variants"].items():
            for branch, b in v["branches"].items():
                rows.append([name, vname, branch, _kib(b["total_bytes"]), _kib(b["on_compute_device_bytes"]),
                             f"{b['x_latent']:.2f}", f"{b['x_hidden']:.2f}", _kib(r["latent_bytes"]),
                             _kib(r["hidden_bytes"])])
            rows.append([name, vname, "shared (rule state)", _kib(v["shared_bytes"]),
                         _kib(v["shared_on_compute_device_bytes"]), f"{v['shared_x_latent']:.2f}",
                         f"{v['shared_bytes'] / r['hidden_bytes']:.2f}", _kib(r["latent_bytes"]),
                         _kib(r["hidden_bytes"])])
        if r["offload"] != "available":
            rows.append([name, "offload_residuals", "–", "not available", "", "", "", "", ""])
    md = common.markdown_table(["model", "variant", "branch", "state (KiB)", "on compute device (KiB)",
                                "× latent", "× hidden state", "latent (KiB)", "hidden state (KiB)"], rows)
    if rss:
        rrows = []
        for v, r in rss["variants"].items():
            if "error" in r:
                rrows.append([v, "error: " + r["error"], "", ""])
            else:
                rrows.append([v, f"{r['peak_rss_growth'] / 2**20:.2f}", f"{r['peak_rss_after'] / 2**20:.0f}",
                              f"{r['python_alloc_peak'] / 1024:.0f}"])
        md += (f"\n\nPeak RSS ({rss['size']} model, {rss['steps']} steps, {rss['mode']}): growth during the "
               f"variant's generation after a warm uncached one\n\n"
               + common.markdown_table(["variant", "peak RSS growth (MiB)", "peak RSS (MiB)",
                                        "Python allocations peak (KiB, tracemalloc)"], rrows))
    return md


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(common.SIZES), choices=list(common.SIZES))
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8; state size does not "
                                                             "depend on it)")
    parser.add_argument("--rss-size", default="demo", choices=list(common.SIZES),
                        help="model for the peak-RSS part (default demo)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS part")
    parser.add_argument("--model", default=None, help="demo-size pipeline folder (default: the shipped model)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    common.add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rss_size, args.steps, args.model)))
        return {}
    if args.quick:
        args.sizes, args.steps, args.rss_size = ["tiny"], 3, "tiny"
    started = time.perf_counter()
    sizes = {}
    for size in args.sizes:
        common.log(f"[memory] {size} ...")
        sizes[size] = measure_size(size, args.steps, args.model)
    rss = {}
    if not args.no_rss:
        common.log(f"[memory] peak RSS ({args.rss_size}) ...")
        variants = ["uncached", "sencache"] + (["offload_residuals"] if offload_option() else [])
        mode = "in-process (quick)" if args.quick else "a fresh process per variant"
        rss = {"size": args.rss_size, "steps": args.steps, "mode": mode,
               "variants": measure_rss(variants, args.rss_size, args.steps, args.model, in_process=args.quick)}
        ok = {k: v for k, v in rss["variants"].items() if "error" not in v}
        if "uncached" in ok and "sencache" in ok:
            rss["sencache_minus_uncached_bytes"] = ok["sencache"]["peak_rss_growth"] - ok["uncached"]["peak_rss_growth"]
    md = table(sizes, rss)
    result = {
        **common.envelope(NAME, "bench_memory.py", argv, args.quick, started),
        "eps": EPS,
        "offload_residuals": offload_option() or "not available",
        "sizes": sizes,
        "rss": rss,
        "table_md": md,
        "notes": ["state = bytes of the session's live tensors at the end of a step (max over steps); "
                  "shared = rule state (x_ref, reference timestep and sensitivities, reuse counters)",
                  "the profile is synthetic (flat, on the scheduler grid): state sizes do not depend on it",
                  "peak RSS growth counts only memory beyond the warm uncached generation's peak: a cache state "
                  "smaller than the allocator's slack shows as 0 (the state bytes above are exact)",
                  "offload_residuals on a CPU-only machine keeps everything in host memory: the split by device "
                  "only means something when the model runs on a GPU"],
    }
    return common.finish(NAME, "Memory", result, md, args, started)


if __name__ == "__main__":
    main()
