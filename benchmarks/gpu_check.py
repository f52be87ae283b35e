"""The GPU check: one prepared script for a lent GPU (≤ 8 minutes on one H200), or the CPU in seconds.

    python benchmarks/gpu_check.py                    # --size real: Wan 2.1 1.3B config, bf16, CUDA
    python benchmarks/gpu_check.py --size tiny        # the same code on a tiny model (CPU, seconds)

"real" is a ``WanTransformer3DModel`` with the Wan 2.1 T2V 1.3B config and random weights (nothing is
downloaded), in bf16, 480×832, 33 frames (14,040 tokens), 50 steps, CFG 5, inside an unchanged
``WanPipeline`` (a small text encoder of the right width, no VAE: latents out). It measures, in order:

1. the environment (torch, CUDA device, diffusers, sencache);
2. uncached generation time and peak memory;
3. sencache at ε = 0: bit-identical to uncached, and after ``disable()``; its overhead over uncached;
4. speed-up at NFE ≈ 26 and ≈ 14 of 50 (a fixed pattern, so NFE is exact) against the ideal T/NFE;
5. peak memory with cached residuals on the device and with ``offload_residuals=True``;
6. a one-sample calibration (time; the profile it gives);
7. budget mode: ``with_target(..., target_nfe=25)`` on that profile, and the NFE it gets;
8. ``compile_repeated_blocks(fullgraph=True)``: compiled-uncached against compiled-with-sencache at NFE ≈ 26,
   the share of T/NFE kept (target ≥ 95 %), compile times, and graph breaks (none allowed).

It writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``. ``--size tiny`` compiles with the
``"eager"`` backend (the CPU has no inductor toolchain to spare); its numbers check the code, not the speed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

SIZES = {
    "tiny": dict(
        transformer=dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=32, in_channels=8,
                         out_channels=8, text_dim=64, patch_size=(1, 1, 1)),
        text_encoder={}, height=32, width=32, frames=5, steps=10, dtype="float32", backend="eager",
        intervals=(2, 4)),
    "real": dict(
        transformer=dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                         in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2),
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        text_encoder=dict(d_model=4096, d_kv=64, num_heads=4, d_ff=256, num_layers=1),
        height=480, width=832, frames=33, steps=50, dtype="bfloat16", backend="inductor",
        intervals=(2, 4)),
}
PROMPT = "a red circle moving left on a plain background"
GUIDANCE = 5.0


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def build(size: dict, device: torch.device, dtype: torch.dtype):
    """A WanPipeline at this size, on ``device``: transformer in ``dtype``, built there (no host copy)."""
    from diffusers import WanPipeline

    from sencache.demo_model.build import build_scheduler, build_text_encoder, build_tokenizer
    from sencache.demo_model.data import vocabulary

    tokenizer = build_tokenizer(vocabulary())
    text_encoder = build_text_encoder(len(tokenizer), **size["text_encoder"]).to(device)
    with torch.device(device):
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**size["transformer"]).to(dtype)
    # as from_pretrained(torch_dtype=...) does: the model's precision-critical parts stay in float32
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, module in transformer.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=None,
                       scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Clock:
    """Wall time of a generation on ``device`` (synchronised) and its peak device memory."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        return out, seconds, peak


def environment(device: torch.device) -> dict:
    import diffusers

    import sencache

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "sencache": sencache.__version__, "device": str(device), "machine": platform.machine()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return env


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="real")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50 real, 10 tiny)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile part")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)

    import sencache
    from sencache import SenCacheConfig
    from sencache.adapter.observers import CallbackObserver
    from sencache.budget import with_target
    from sencache.core.rules import FixedConfig
    from sencache.demo_model.build import TEXT_LEN

    size = SIZES[args.size]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.size == "real" and device.type != "cuda":
        log("warning: --size real on the CPU takes hours; use --size tiny there")
    dtype = getattr(torch, size["dtype"])
    steps = args.steps or size["steps"]
    result: dict = {"size": args.size, "steps": steps, "dtype": size["dtype"], "environment": environment(device)}
    log(f"building the {args.size} pipeline on {device} ({size['dtype']})")
    pipe = build(size, device, dtype)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    call = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, height=size["height"],
                width=size["width"], num_frames=size["frames"], output_type="latent", max_sequence_length=TEXT_LEN)
    latent_shape = None

    def generate():
        return pipe(generator=torch.Generator().manual_seed(0), **call).frames

    clock = Clock(device)
    log("warm-up (uncached)")
    warm, _, _ = clock(generate)
    latent_shape = list(warm.shape)
    tokens = math.prod(warm.shape[2:]) // math.prod(size["transformer"]["patch_size"])
    result["model"] = {"params_m": round(params / 1e6, 1), "latent": latent_shape, "tokens": tokens,
                       "height": size["height"], "width": size["width"], "frames": size["frames"]}

    # 2-3: uncached, exactness at eps = 0, overhead
    log("uncached")
    reference, t_uncached, mem_uncached = clock(generate)
    flat = sencache.SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [0.001, 0.001],
                                       model_class=type(pipe.transformer).__name__)
    session = sencache.enable(pipe, SenCacheConfig(flat, eps=0.0))
    log("sencache at eps = 0")
    exact_out, t_eps0, _ = clock(generate)
    sencache.disable(pipe)
    after_disable, _, _ = clock(generate)
    result["uncached"] = {"seconds": round(t_uncached, 3), "ms_per_call": round(1000 * t_uncached / (2 * steps), 2),
                          "peak_mib": mem_uncached}
    result["exactness"] = {"eps0_equal": bool(torch.equal(exact_out, reference)),
                           "after_disable_equal": bool(torch.equal(after_disable, reference)),
                           "eps0_nfe": session.summary()["nfe"],
                           "overhead": round(t_eps0 / t_uncached - 1, 4)}

    # 4-5: speed-up against T/NFE and memory, with and without offload
    speedups = []
    for interval in size["intervals"]:  # every 2nd / 4th step and the last: NFE 26 and 14 of 50
        for offload in (False, True) if interval == size["intervals"][0] else (False,):
            held = [0]  # the most residual bytes the session held during the run (it frees them at the end)
            session = sencache.enable(pipe, FixedConfig(interval=interval, final_steps=1), offload_residuals=offload)
            session.observers.append(CallbackObserver(
                lambda event, s=session: held.__setitem__(0, max(held[0], sum(s.residual_bytes().values())))))
            log(f"fixed interval {interval} (offload {offload})")
            _, seconds, peak = clock(generate)
            nfe = session.summary()["nfe"]
            held = held[0] / 2**20
            sencache.disable(pipe)
            ideal = steps / nfe
            speedups.append({"interval": interval, "offload": offload, "nfe": nfe, "seconds": round(seconds, 3),
                             "speedup": round(t_uncached / seconds, 3), "ideal": round(ideal, 3),
                             "of_ideal": round(t_uncached / seconds / ideal, 4), "peak_mib": peak,
                             "peak_over_uncached_mib": None if peak is None else round(peak - mem_uncached, 1),
                             "residual_mib": round(held, 4)})
    result["speedup"] = speedups

    # 6-7: one-sample calibration, budget mode
    log("calibration (1 sample)")
    profile, t_calib, _ = clock(lambda: sencache.calibrate(
        pipe, [PROMPT], num_inference_steps=steps, num_samples=1, progress=False, guidance_scale=GUIDANCE,
        height=size["height"], width=size["width"], num_frames=size["frames"], max_sequence_length=TEXT_LEN))
    target = round(steps / 2)
    config = with_target(SenCacheConfig(profile), target_nfe=target)
    session = sencache.enable(pipe, config)
    log(f"budget mode (target NFE {target})")
    _, t_budget, _ = clock(generate)
    result["calibration"] = {"seconds": round(t_calib, 2), "samples": 1}
    result["budget"] = {"target_nfe": target, "eps": config.eps, "nfe": session.summary()["nfe"],
                        "seconds": round(t_budget, 3), "speedup": round(t_uncached / t_budget, 3)}
    sencache.disable(pipe)

    # 8: regional compilation, fullgraph
    if not args.no_compile:
        result["compile"] = compiled(pipe, generate, clock, size, steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    log(f"wrote {out / 'gpu_check.json'} and gpu_check.md")
    return result


def compiled(pipe, generate, clock, size: dict, steps: int) -> dict:
    """Compiled-uncached against compiled-with-sencache (a fixed pattern at NFE ≈ 26 of 50)."""
    import torch._dynamo

    import sencache
    from sencache.core.rules import FixedConfig

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend=size["backend"])
    log(f"compiling the blocks (fullgraph, backend {size['backend']})")
    _, t_compile, _ = clock(generate)
    _, t_compiled, _ = clock(generate)
    session = sencache.enable(pipe, FixedConfig(interval=size["intervals"][0], final_steps=1))
    log("compiled, with sencache (first run recompiles for the skip mode)")
    _, t_recompile, _ = clock(generate)
    _, t_cached, _ = clock(generate)
    nfe = session.summary()["nfe"]
    sencache.disable(pipe)
    ideal = steps / nfe
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return {"backend": size["backend"], "fullgraph": True, "first_run_s": round(t_compile, 2),
            "uncached_s": round(t_compiled, 3), "sencache_first_run_s": round(t_recompile, 2),
            "sencache_s": round(t_cached, 3), "nfe": nfe, "speedup": round(t_compiled / t_cached, 3),
            "ideal": round(ideal, 3), "of_ideal": round(t_compiled / t_cached / ideal, 4), "graph_breaks": breaks}


def markdown(r: dict) -> str:
    env = r["environment"]
    machine = env.get("gpu", f"CPU ({env['machine']})")
    lines = [f"## GPU check ({r['size']}): {machine}, torch {env['torch']}, diffusers {env['diffusers']}", "",
             f"Model: {r['model']['params_m']} M params, latent {r['model']['latent']}, {r['model']['tokens']} tokens, "
             f"{r['steps']} steps, CFG {GUIDANCE}, {r['dtype']}.", "",
             "| check | result |", "|---|---|"]
    u, e = r["uncached"], r["exactness"]
    lines.append(f"| uncached | {u['seconds']} s ({u['ms_per_call']} ms per call), peak {fmt_mib(u['peak_mib'])} |")
    lines.append(f"| ε = 0 bit-identical / after disable() | {e['eps0_equal']} / {e['after_disable_equal']} "
                 f"(NFE {e['eps0_nfe']}) |")
    lines.append(f"| ε = 0 overhead (one run each) | {100 * e['overhead']:.2f} % |")
    for s in r["speedup"]:
        offload = ", offload_residuals" if s["offload"] else ""
        extra = "" if s["peak_over_uncached_mib"] is None else f", peak +{s['peak_over_uncached_mib']} MiB"
        lines.append(f"| fixed NFE {s['nfe']}{offload} | {s['speedup']}× of ideal {s['ideal']}× = "
                     f"{100 * s['of_ideal']:.1f} %{extra}, residuals held {s['residual_mib']:.3g} MiB |")
    c, b = r["calibration"], r["budget"]
    lines.append(f"| calibration, 1 sample | {c['seconds']} s |")
    lines.append(f"| budget mode, target NFE {b['target_nfe']} | NFE {b['nfe']} (ε {b['eps']:.4g}), {b['speedup']}× |")
    if "compile" in r:
        k = r["compile"]
        lines.append(f"| compiled ({k['backend']}, fullgraph) uncached | {k['uncached_s']} s "
                     f"(first run with compilation {k['first_run_s']} s) |")
        lines.append(f"| compiled with sencache, NFE {k['nfe']} | {k['speedup']}× of ideal {k['ideal']}× = "
                     f"{100 * k['of_ideal']:.1f} % (first run {k['sencache_first_run_s']} s), graph breaks "
                     f"{k['graph_breaks']} |")
    return "\n".join(lines) + "\n"


def fmt_mib(value) -> str:
    return "n/a (CPU)" if value is None else f"{value:.0f} MiB"


if __name__ == "__main__":
    main()
