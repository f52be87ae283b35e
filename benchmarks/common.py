"""Shared pieces of the benchmarks: models of three sizes, the profile, timing, tables, JSON, the machine.

Every benchmark is a plain script with a ``main(argv) -> dict`` that prints a markdown table and writes
``benchmarks/results/NAME.json`` (or ``--out DIR/NAME.json``). Every ratio a benchmark reports is measured
in that one run, on the same machine, with interleaved repetitions.

Run them niced and single-threaded on a shared machine (see benchmarks/README.md):

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO = BENCH_DIR.parent

# The three model sizes (WanTransformer3DModel overrides of the demo config). "demo" is the shipped
# model's config; with the trained weights present it *is* the shipped model.
SIZES: dict[str, dict] = {
    "tiny": dict(num_layers=1, num_attention_heads=2, attention_head_dim=16),
    "demo": {},
    "20m": dict(num_layers=12, num_attention_heads=8, attention_head_dim=48, ffn_dim=512),
}

PROMPT = "a red circle moving left on a plain background"  # the timing prompt (content does not change cost)


# --------------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------------


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))


def add_common_args(parser, name: str) -> None:
    parser.add_argument("--out", default=str(RESULTS_DIR), help=f"folder for {name}.json (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, a few steps, few repetitions: checks that the script works (seconds); "
                             "its numbers are not results")


def shipped_model_present() -> bool:
    from sencache.demo_model import DEFAULT_MODEL_DIR

    return (Path(DEFAULT_MODEL_DIR) / "model_index.json").is_file()


def load_model(size: str = "demo", model_dir: str | None = None, seed: int = 0, **overrides) -> tuple[Any, dict]:
    """(pipeline, info). ``demo``: ``model_dir`` if given, else the shipped model if present, else an
    untrained model with the demo config. Other sizes are always untrained (timing does not need weights);
    ``overrides`` change their config further (e.g. ``num_layers=2``)."""
    from sencache.demo_model.build import build_pipeline
    from sencache.demo_model.data import vocabulary

    if size not in SIZES:
        raise SystemExit(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    if size == "demo" and not overrides and (model_dir is not None or shipped_model_present()):
        from sencache.demo_model import DEFAULT_MODEL_DIR
        from sencache.runtime.loading import load_pipeline

        path = Path(model_dir) if model_dir is not None else Path(DEFAULT_MODEL_DIR)
        pipe = load_pipeline(path)
        source = "shipped" if model_dir is None else "given"
        info = {"size": size, "source": source, "path": str(path)}
    else:
        config = {**SIZES[size], **overrides}
        pipe = build_pipeline(vocabulary(), seed=seed, **config)
        info = {"size": size, "source": "untrained", "path": None, "overrides": config}
    pipe.set_progress_bar_config(disable=True)
    t = pipe.transformer
    cfg = t.config
    info.update(params=sum(p.numel() for p in t.parameters()), num_layers=int(cfg.num_layers),
                num_attention_heads=int(cfg.num_attention_heads), attention_head_dim=int(cfg.attention_head_dim),
                ffn_dim=int(cfg.ffn_dim))
    return pipe, info


def calibration_prompts(n: int = 2) -> list[str]:
    from sencache.demo_model.prompts import default_calibration_prompts

    return default_calibration_prompts(n)


def load_profile(pipe, model_info: dict, steps: int, profile_path: str | None = None, num_samples: int = 2,
                 log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """(profile, info): ``profile_path`` if given, the shipped profile with the shipped model, else a
    fresh ``calibrate(pipe, calibration prompts, num_inference_steps=steps, num_samples=num_samples)``."""
    from sencache import SensitivityProfile
    from sencache.calibration.calibrate import calibrate
    from sencache.calibration.loop import calibrate_loop
    from sencache.demo_model import DEFAULT_PROFILE

    path = Path(profile_path) if profile_path else None
    if path is None and model_info.get("source") == "shipped" and Path(DEFAULT_PROFILE).is_file():
        path = Path(DEFAULT_PROFILE)
    if path is not None:
        profile = SensitivityProfile.load(path)
        profile.check_model(pipe.transformer)
        return profile, {"source": "file", "path": str(path), "num_samples": profile.metadata.get("num_samples"),
                         "num_inference_steps": profile.metadata.get("num_inference_steps")}
    start = time.perf_counter()
    prompts = calibration_prompts(max(1, num_samples))
    log(f"calibrating a profile: {num_samples} sample(s) x {steps} steps (no shipped profile for this model)")
    profile = calibrate(pipe, prompts, num_inference_steps=steps, num_samples=num_samples, progress=False)
    calibrate_loop(pipe, profile, prompts[:1], num_inference_steps=steps, gain_every=max(1, steps // 8), progress=False)
    return profile, {"source": "calibrated", "path": None, "num_samples": num_samples, "num_inference_steps": steps,
                     "prompts": prompts, "seconds": round(time.perf_counter() - start, 2)}


# --------------------------------------------------------------------------------------------------
# transformer calls, captured and replayed
# --------------------------------------------------------------------------------------------------


class CapturedCall:
    """One transformer call of a pipeline run: its inputs and the cache context the pipeline set."""

    __slots__ = ("step", "branch", "num_steps", "sigma", "kwargs")

    def __init__(self, step, branch, num_steps, sigma, kwargs):
        self.step, self.branch, self.num_steps, self.sigma, self.kwargs = step, branch, num_steps, sigma, kwargs


def capture_calls(pipe, steps: int, prompt: str = PROMPT, seed: int = 0, guidance_scale: float = 5.0,
                  **call_kwargs) -> list[CapturedCall]:
    """Run the pipeline once, uncached, and record every transformer call's inputs (cloned; a tensor shared by
    two calls is one clone shared by both).

    WanPipeline calls the transformer as cond then uncond within each step (``cache_context("cond")`` /
    ``("uncond")``, with ``step_index``, ``sigma`` and ``num_inference_steps``); the replay sets the same
    contexts, so a hooked replay takes exactly the path it takes inside the pipeline.
    """
    from sencache.runtime.generation import generate

    transformer = pipe.transformer
    raw: list[tuple[float, dict]] = []
    copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (the pipeline's tensor, its one copy)

    def copy(v: torch.Tensor) -> torch.Tensor:
        # a tensor the pipeline hands to both CFG calls of a step is one copy in both replayed calls, as it was one
        # tensor in the pipeline (the hooks read such a step's inputs once)
        known = copies.get(id(v))
        if known is None or known[0] is not v:
            known = copies[id(v)] = (v, v.detach().clone())
        return known[1]

    def grab(module, args, kwargs):
        kw = dict(kwargs)
        for name, value in zip(("hidden_states", "timestep", "encoder_hidden_states"), args):
            kw[name] = value
        kw = {k: (copy(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        raw.append((float(kw["timestep"].reshape(-1)[0]), kw))

    handle = transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        generate(pipe, prompt, seed, num_inference_steps=steps, guidance_scale=guidance_scale, **call_kwargs)
    finally:
        handle.remove()
    sigmas = [float(s) for s in pipe.scheduler.sigmas]
    calls, step, last_t, pos = [], -1, None, 0
    for t, kw in raw:
        if t != last_t:
            step, last_t, pos = step + 1, t, 0
        else:
            pos += 1
        branch = ("cond", "uncond")[pos] if pos < 2 else f"call{pos}"
        calls.append(CapturedCall(step, branch, steps, sigmas[step] if step < len(sigmas) else None, kw))
    if step + 1 != steps:
        raise RuntimeError(f"captured {step + 1} steps, expected {steps}")
    return calls


def replay(transformer, calls: Sequence[CapturedCall], per_call: list | None = None,
           context: list | None = None) -> float:
    """Run the captured calls in order, each inside the pipeline's cache context. Returns the seconds;
    ``per_call`` (if given) receives each call's seconds (context included), ``context`` the seconds spent
    entering and leaving ``transformer.cache_context`` (diffusers sets the context on every stateful hook)."""
    perf = time.perf_counter
    start = perf()
    with torch.no_grad():
        for c in calls:
            t0 = perf()
            ctx = transformer.cache_context(c.branch, step_index=c.step, sigma=c.sigma, num_inference_steps=c.num_steps)
            ctx.__enter__()
            t1 = perf()
            try:
                transformer(**c.kwargs)
            finally:
                t2 = perf()
                ctx.__exit__(None, None, None)
            t3 = perf()
            if per_call is not None:
                per_call.append(t3 - t0)
            if context is not None:
                context.append((t1 - t0) + (t3 - t2))
    return perf() - start


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return statistics.median(vals) if vals else math.nan


def quantiles(values: Iterable[float]) -> tuple[float, float]:
    """(p25, p75), for a spread next to a median."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], vals[0]
    q = statistics.quantiles(vals, n=4, method="inclusive")
    return q[0], q[2]


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x, spec: str = ".3g", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def pct(x, digits: int = 2) -> str:
    return fmt(None if x is None else 100.0 * x, f".{digits}f") + (" %" if x is not None else "")


def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    import diffusers

    model = ""
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        import sencache

        version = sencache.__version__
    except Exception:  # pragma: no cover
        version = None
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=10, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        nproc = ""
    return {
        "nproc": nproc or str(os.cpu_count()),
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor() or None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "sencache": version,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "load_average": load,
        "git_commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip() or None,
    }


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)])


def write_result(name: str, data: dict, out_dir) -> Path:
    """Write ``data`` as ``OUT/NAME.json`` (strict JSON: NaN/inf become null)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def finish(name: str, title: str, result: dict, md: str, args, started: float, notes: list[str] = ()) -> dict:
    """Stamp the run time, write ``OUT/NAME.json`` and print the section (flagged when it is a smoke run)."""
    result["seconds"] = round(time.perf_counter() - started, 2)
    path = write_result(name, result, args.out)
    print(f"## {title}{' (smoke run: not a result)' if args.quick else ''}\n\n{md}\n")
    for note in notes:
        print(f"- {note}")
    print(f"wrote {path}")
    return result


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    return x


def envelope(name: str, script: str, argv, quick: bool, started: float) -> dict:
    """The keys every result file carries."""
    return {
        "benchmark": name,
        "command": command_line(script, argv),
        "run_id": os.environ.get("SENCACHE_BENCH_RUN_ID"),
        "quick": bool(quick),
        "smoke_run_only": bool(quick),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.perf_counter() - started, 2),
        "machine": machine_info(),
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
