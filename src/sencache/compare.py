"""Run caching methods side by side on the same prompts and seeds, against the uncached reference.

    results = compare(pipe, prompts, seeds, ["sencache", "magcache", "teacache"], sweep=True,
                      num_inference_steps=50, out_dir="runs/cmp", profile=profile, baselines=baselines)

For every prompt x seed (a *job*) the uncached reference (``none``, no hooks) runs first; then every method
at every setting (its default threshold, or its whole sweep). Fidelity is PSNR / SSIM / LPIPS of the raw
frames against the reference frames (never an encoded video); cost is the NFE counted by
:class:`sencache.methods.StepCounter` and the wall time of the pipeline call.

The work is cut so that a later change can shard it over ``torchrun`` ranks without touching the rest:
:func:`make_jobs` is a pure function of the prompt and seed lists, :func:`run_job` runs one job and
returns a JSON-able record, :func:`merge_records` combines records from any number of shards in job
order, and :func:`summarize` turns merged records into the results dict.

Outputs in ``out_dir``: ``results.json``, ``results.md``, ``pareto.png`` and ``frames.npz`` (uint8 frames
of the reference and of each method's primary setting, for :func:`sencache.report.write_report`).

Under ``torchrun --nproc_per_node=K sencache compare ...`` the jobs are sharded round-robin over the ranks
(:func:`shard_jobs`); rank 0 gathers the records and frames, merges them (:func:`merge_records`) and writes
the outputs once, so ``results.json`` equals a single-process run's apart from wall-clock fields. Threshold
tuning (``--nfe-targets``) and baseline calibration run on rank 0 and are broadcast. A job that fails is
recorded in ``results.json["failures"]`` with its prompt, seed, rank and error; the other jobs still run.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import SenCacheError
from .prompts import read_prompts  # noqa: F401  (part of compare's API)
from .methods import REFERENCE, MethodContext, get_method, quiet_sencache

FORMAT = "sencache-compare/1"
PSNR_CAP = 100.0  # dB; identical videos (infinite PSNR) are recorded at the cap, flagged psnr_capped

__all__ = [
    "Job",
    "Variant",
    "compare",
    "make_jobs",
    "merge_records",
    "plan_variants",
    "read_prompts",
    "run_job",
    "shard_jobs",
    "summarize",
    "tune_threshold",
    "tune_values",
    "write_outputs",
]


# --------------------------------------------------------------------------------------------------
# Plan: jobs and variants (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Variant:
    """One method at one setting."""

    method: str
    value: Any
    key: str  # "sencache@eps=0.1" (the reference is just "none")
    primary: bool  # the setting shown in videos and schedule plots


def make_jobs(prompts: Sequence[str], seeds: Sequence[int]) -> list[Job]:
    """Every prompt x seed, prompt-major, numbered 0..N-1. Pure: same lists, same jobs."""
    prompts = [str(p) for p in prompts]
    seeds = [int(s) for s in seeds]
    if not prompts:
        raise SenCacheError("no prompts to compare on: give at least one")
    if not seeds:
        raise SenCacheError("no seeds: give at least one (e.g. --seeds 0)")
    return [Job(i * len(seeds) + j, p, s) for i, p in enumerate(prompts) for j, s in enumerate(seeds)]


def shard_jobs(jobs: Sequence[Job], rank: int, world_size: int) -> list[Job]:
    """The jobs of one rank (round robin), for a later torchrun driver."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise SenCacheError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(jobs[rank::world_size])


def plan_variants(methods: Sequence[str], sweep: bool = False, values: dict | None = None,
                  ctx: MethodContext | None = None, pipe=None) -> tuple[list[Variant], dict[str, str]]:
    """The settings to run (in order) and the methods skipped with their reason.

    ``values`` overrides a method's setting(s): ``{"magcache": 0.13}`` or ``{"magcache": [0.1, 0.2]}``.
    ``none`` in ``methods`` re-runs the reference (a check that runs repeat exactly, and a timing noise floor).
    """
    values = dict(values or {})
    variants, skipped, seen = [], {}, set()
    for name in methods:
        spec = get_method(name)
        if name in seen:
            continue
        seen.add(name)
        reason = spec.unavailable(ctx, pipe)
        if reason is not None:
            skipped[name] = reason
            continue
        if spec.param is None:  # "none": a second uncached run, keyed apart from the reference itself
            variants.append(Variant(name, None, f"{name}@rerun", True))
            continue
        pinned = values.get(name)
        if pinned is not None:
            chosen = list(pinned) if isinstance(pinned, (list, tuple)) else [pinned]
            primary = chosen[0]
        else:
            chosen = [*spec.sweep, spec.default] if sweep else [spec.default]
            primary = spec.default
        primary = spec.coerce(primary)
        chosen = sorted({spec.coerce(v) for v in chosen})
        for v in chosen:
            variants.append(Variant(name, v, f"{name}@{spec.setting_id(v)}", v == primary))
    return variants, skipped


# --------------------------------------------------------------------------------------------------
# Running one job
# --------------------------------------------------------------------------------------------------


def _finite(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _metrics(ref: np.ndarray, test: np.ndarray, use_lpips: bool) -> dict:
    from .metrics import video_metrics

    m = video_metrics(ref, test, lpips=use_lpips)
    psnr = float(m["psnr"])
    return {"psnr": min(psnr, PSNR_CAP), "psnr_capped": psnr >= PSNR_CAP, "ssim": _finite(m["ssim"]),
            "lpips": _finite(m.get("lpips"))}


def _lpips_ready() -> bool:
    from .metrics import lpips_weights_path

    return lpips_weights_path().is_file()


def run_job(pipe, job: Job, variants: Sequence[Variant], ctx: MethodContext, guidance_scale: float = 5.0,
            use_lpips: bool = True, keep_frames: bool = True, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Reference first, then every variant, on one prompt and seed. Returns (record, frames).

    ``record`` is JSON-able; ``frames`` maps "none" and each primary variant key to uint8 (F, H, W, 3).
    """
    from .generation import generate, to_uint8

    T = ctx.num_inference_steps
    frames: dict[str, np.ndarray] = {}

    def one(method: str, value) -> tuple[dict, np.ndarray]:
        spec = get_method(method)
        handle = spec.apply(pipe, value, ctx)
        try:
            with quiet_sencache():
                out = generate(pipe, job.prompt, job.seed, num_inference_steps=T, guidance_scale=guidance_scale)
            stats = handle.stats()
        finally:
            handle.remove()
        return {"wall_s": out.seconds, **stats}, out.frames

    ref_stats, ref_frames = one(REFERENCE, None)
    if progress is not None:
        progress.update(1)
    if keep_frames:
        frames[REFERENCE] = to_uint8(ref_frames)
    runs = {}
    for v in variants:
        stats, test = one(v.method, v.value)
        run = {"method": v.method, "value": v.value, **stats, **_metrics(ref_frames, test, use_lpips)}
        run["speedup"] = ref_stats["wall_s"] / stats["wall_s"] if stats["wall_s"] > 0 else None
        runs[v.key] = run
        if keep_frames and v.primary:
            frames[v.key] = to_uint8(test)
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{v.key} nfe={stats['nfe']} psnr={run['psnr']:.1f}")
    record = {"job": job.index, "prompt": job.prompt, "seed": job.seed, "reference": ref_stats, "runs": runs}
    return record, frames


def merge_records(*shards: Iterable[dict]) -> list[dict]:
    """Combine per-job records from any number of shards, in any order, into job order.

    A job given twice must carry the same prompt and seed (a re-run replaces nothing: the first is kept).
    """
    merged: dict[int, dict] = {}
    for shard in shards:
        for rec in shard:
            idx = int(rec["job"])
            if idx in merged:
                old = merged[idx]
                if (old["prompt"], old["seed"]) != (rec["prompt"], rec["seed"]):
                    raise SenCacheError(f"two different records claim job {idx}: shards come from different job lists")
                continue
            merged[idx] = rec
    return [merged[i] for i in sorted(merged)]


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(records: Sequence[dict], variants: Sequence[Variant], skipped: dict[str, str], *, ctx: MethodContext,
              guidance_scale: float, prompts: Sequence[str], seeds: Sequence[int], model: str | None = None,
              calibration: dict | None = None, notes: Sequence[str] = ()) -> dict:
    """The results dict: per method and setting, means over jobs and the per-prompt values."""
    T = ctx.num_inference_steps
    ref_wall = _mean(r["reference"]["wall_s"] for r in records)
    methods: dict[str, dict] = {}
    for v in variants:
        spec = get_method(v.method)
        entry = methods.setdefault(v.method, {
            "family": spec.family, "description": spec.description, "param": spec.param, "available": True,
            "skipped": None, "settings": []})
        runs = [(r, r["runs"][v.key]) for r in records if v.key in r["runs"]]
        wall = _mean(run["wall_s"] for _, run in runs)
        entry["settings"].append({
            "key": v.key,
            "value": v.value,
            "primary": v.primary,
            "setting": spec.setting(v.value, ctx),
            "nfe": _mean(run["nfe"] for _, run in runs),
            "nfe_fraction": (_mean(run["nfe"] for _, run in runs) or 0.0) / T,
            "wall_s": wall,
            "speedup": (ref_wall / wall) if (ref_wall and wall) else None,
            "psnr": _mean(run["psnr"] for _, run in runs),
            "psnr_capped": all(run["psnr_capped"] for _, run in runs),
            "ssim": _mean(run["ssim"] for _, run in runs),
            "lpips": _mean(run["lpips"] for _, run in runs),
            "schedule": runs[0][1]["schedule"] if runs else [],
            "per_prompt": [
                {"job": r["job"], "prompt": r["prompt"], "seed": r["seed"], "nfe": run["nfe"],
                 "wall_s": run["wall_s"], "speedup": run["speedup"], "psnr": run["psnr"], "ssim": run["ssim"],
                 "lpips": run["lpips"], "skipped_steps": run["skipped_steps"]}
                for r, run in runs
            ],
        })
    for name, reason in skipped.items():
        spec = get_method(name)
        methods[name] = {"family": spec.family, "description": spec.description, "param": spec.param,
                         "available": False, "skipped": reason, "settings": []}
    import diffusers
    import torch

    from . import __version__

    return {
        "format": FORMAT,
        "model": model,
        "num_inference_steps": T,
        "guidance_scale": guidance_scale,
        "psnr_cap_db": PSNR_CAP,
        "prompts": list(prompts),
        "seeds": [int(s) for s in seeds],
        "evaluation": {"prompts": list(prompts), "seeds": [int(s) for s in seeds]},
        "calibration": calibration or {},
        "reference": {
            "method": REFERENCE, "nfe": _mean(r["reference"]["nfe"] for r in records), "wall_s": ref_wall,
            "per_prompt": [{"job": r["job"], "prompt": r["prompt"], "seed": r["seed"],
                            "wall_s": r["reference"]["wall_s"], "nfe": r["reference"]["nfe"]} for r in records],
        },
        "methods": methods,
        "method_order": list(dict.fromkeys([v.method for v in variants] + list(skipped))),
        "jobs": list(records),
        "notes": list(notes),
        "environment": {
            "sencache": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(), "device": "cpu", "python": platform.python_version(),
        },
    }


def write_outputs(results: dict, out_dir, frames: dict | None = None) -> dict[str, Path]:
    """results.json, results.md, pareto.png (and frames.npz when frames are given) in ``out_dir``."""
    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results.json": out / "results.json", "results.md": out / "results.md", "pareto.png": out / "pareto.png"}
    paths["results.json"].write_text(json.dumps(results, indent=1, allow_nan=False))
    paths["results.md"].write_text(report.markdown_table(results))
    report.plot_pareto(results, paths["pareto.png"])
    if frames:
        paths["frames.npz"] = report.save_frames(out / "frames.npz", frames)
    return paths


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def calibration_info(profile=None, baselines=None, profile_path=None, baselines_path=None) -> dict:
    info: dict[str, Any] = {}
    if baselines is not None:
        info["baselines"] = {"path": str(baselines_path) if baselines_path else None,
                             "prompts": list(baselines.calibration_prompts),
                             "seeds": list(baselines.calibration_seeds),
                             "magcache_prompt": baselines.magcache_prompt,
                             "num_inference_steps": baselines.num_inference_steps}
    if profile is not None:
        meta = profile.metadata
        info["profile"] = {"path": str(profile_path) if profile_path else None,
                           "prompts": list(dict.fromkeys(meta.get("prompts") or [])),
                           "seeds": list(dict.fromkeys(meta.get("seeds") or [])),
                           "num_samples": meta.get("num_samples")}
    return info


def check_held_out(prompts: Sequence[str], profile=None, baselines=None) -> None:
    """Evaluation prompts must not be calibration prompts (of the baselines or of the profile)."""
    from .baseline_calibration import check_disjoint

    if baselines is not None:
        check_disjoint(baselines.calibration_prompts, prompts, "baseline calibration (baselines.json)")
    if profile is not None and profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")


def _distributed() -> bool:
    """True when a torch.distributed group of more than one rank is up (torchrun + init_if_needed)."""
    import torch.distributed as tdist

    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def _on_main(fn):
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank; a single process just runs it.

    If it fails on rank 0, every rank raises (so none waits forever for a result that will not come)."""
    from . import distributed as dist

    if not _distributed():
        return fn()
    result, error = None, None
    if dist.is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others were told
            error = exc
    shared = dist.broadcast_object((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if shared[1] is not None:
        raise SenCacheError(f"rank 0 failed: {shared[1]}")
    return shared[0]


def compare(pipe, prompts: Sequence[str], seeds: Sequence[int], methods: Sequence[str], sweep: bool = False,
            num_inference_steps: int = 50, guidance_scale: float = 5.0, out_dir=None, profile=None, baselines=None,
            values: dict | None = None, use_lpips: bool | None = None, progress: bool = True, model: str | None = None,
            profile_path=None, baselines_path=None, warmup: bool = True, shard: bool | None = None,
            keep_going: bool | None = None) -> dict | None:
    """Compare ``methods`` against the uncached reference on every prompt x seed. Returns the results dict.

    ``values`` pins a method's setting(s) (see :func:`plan_variants`); ``use_lpips=None`` computes LPIPS when
    its weights are installed. With ``out_dir`` the files listed in the module docstring are written there.

    ``shard``: split the jobs over the ranks of the torch.distributed group (default: when one of more
    than one rank is initialised and the transformer is not itself split by diffusers' context
    parallelism, whose ranks must all run every job). Sharded, only rank 0 gets the results (the other
    ranks return None). ``keep_going`` (default: when sharded): record a failing job in
    ``results["failures"]`` and go on, instead of raising.
    """
    from tqdm.auto import tqdm

    from . import distributed as dist
    from .generation import generate

    if shard is None:
        shard = _distributed() and getattr(getattr(pipe, "transformer", None), "_parallel_config", None) is None
    shard = bool(shard) and _distributed()
    if keep_going is None:
        keep_going = shard
    check_held_out(prompts, profile, baselines)
    ctx = MethodContext(num_inference_steps=int(num_inference_steps), profile=profile, baselines=baselines)
    variants, skipped = plan_variants(methods, sweep, values, ctx, pipe)
    for name, reason in skipped.items():
        if get_method(name).family != "cache-dit" and "two_blocks" not in get_method(name).needs:
            raise SenCacheError(f"{name} cannot run: {reason.removeprefix('skipped: ')}")
    notes = []
    if use_lpips is None:
        use_lpips = _lpips_ready()
        if not use_lpips:
            notes.append("LPIPS not computed: weights missing (python scripts/fetch_lpips_weights.py)")
    jobs = make_jobs(prompts, seeds)
    rank = dist.rank() if shard else 0
    mine = shard_jobs(jobs, rank, dist.world_size()) if shard else jobs
    main = rank == 0
    if warmup and mine:  # first-call costs (allocations, lazy init) must not land on the first timed run
        try:
            generate(pipe, mine[0].prompt, mine[0].seed, num_inference_steps=2, guidance_scale=guidance_scale)
        except Exception:
            if not keep_going:
                raise  # otherwise the job itself fails below and is recorded with its prompt
    bar = tqdm(total=len(mine) * (1 + len(variants)), desc="compare", unit="run", disable=not progress or not main)
    records, failures, frames = [], [], {}
    try:
        for job in mine:
            try:
                rec, job_frames = run_job(pipe, job, variants, ctx, guidance_scale, use_lpips,
                                          keep_frames=out_dir is not None, progress=bar)
            except Exception as exc:
                if not keep_going:
                    raise
                failures.append({"job": job.index, "prompt": job.prompt, "seed": job.seed, "rank": rank,
                                 "error": f"{type(exc).__name__}: {exc}"})
                print(f"[rank {rank}] FAILED job {job.index} {job.prompt!r} seed {job.seed}: {exc}", file=sys.stderr)
                continue
            records.append(rec)
            frames.update({f"{job.index}|{k}": v for k, v in job_frames.items()})
    finally:
        bar.close()
    if shard:
        parts = dist.gather_objects((records, failures, frames))
        if not dist.is_main():
            return None
        records = merge_records(*(part[0] for part in parts))
        failures = [f for part in parts for f in part[1]]
        frames = {k: v for part in parts for k, v in part[2].items()}
    failures.sort(key=lambda f: f["job"])
    results = summarize(merge_records(records), variants, skipped, ctx=ctx, guidance_scale=guidance_scale,
                        prompts=prompts, seeds=seeds, model=model,
                        calibration=calibration_info(profile, baselines, profile_path, baselines_path), notes=notes)
    results["failures"] = failures
    if out_dir is not None and (shard or dist.is_main()):  # unsharded ranks (context parallelism) share one run
        results["files"] = {k: str(v) for k, v in write_outputs(results, out_dir, frames).items()}
    return results


# --------------------------------------------------------------------------------------------------
# Picking a threshold for a target NFE (on calibration prompts)
# --------------------------------------------------------------------------------------------------


def measure_nfe(pipe, method: str, value, ctx: MethodContext, prompts: Sequence[str], seeds: Sequence[int],
                guidance_scale: float = 5.0) -> float:
    from .generation import generate

    spec = get_method(method)
    nfes = []
    for p in prompts:
        for s in seeds:
            with spec.apply(pipe, value, ctx) as handle, quiet_sencache():
                generate(pipe, p, s, num_inference_steps=ctx.num_inference_steps, guidance_scale=guidance_scale)
                nfes.append(float(handle.stats()["nfe"]))
    return float(np.mean(nfes))


def tune_threshold(pipe, method: str, target_nfe: float, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                   ctx: MethodContext | None = None, guidance_scale: float = 5.0, iterations: int = 7,
                   bounds: tuple[float, float] | None = None, cache: dict | None = None) -> dict:
    """The setting of ``method`` whose mean NFE on ``prompts`` comes closest to ``target_nfe``.

    NFE falls as the threshold rises, so a bisection (geometric for thresholds, integer for intervals)
    brackets the target. Use calibration prompts here, never the evaluation prompts.
    Returns {"method", "value", "nfe", "target_nfe", "evaluations": [[value, nfe], ...]}. Pass the same
    ``cache`` dict to several calls (same method, prompts and steps) to share the runs between targets.
    """
    ctx = ctx or MethodContext()
    spec = get_method(method)
    if spec.param is None:
        raise SenCacheError(f"{method} has no threshold to tune")
    seen: dict = cache if cache is not None else {}

    def nfe(v):
        v = spec.coerce(v)
        if v not in seen:
            seen[v] = measure_nfe(pipe, method, v, ctx, prompts, seeds, guidance_scale)
        return seen[v]

    if spec.integer:
        lo, hi = (int(bounds[0]), int(bounds[1])) if bounds else (1, max(2, ctx.num_inference_steps // 2))
        while hi - lo > 1 and len(seen) < iterations + 2:
            mid = (lo + hi) // 2
            if nfe(mid) > target_nfe:
                lo = mid
            else:
                hi = mid
        nfe(lo), nfe(hi)
    else:
        lo, hi = bounds if bounds else (float(f"{min(spec.sweep) / 4:.3g}"), float(f"{max(spec.sweep) * 4:.3g}"))
        for _ in range(3):  # widen until the bracket holds the target
            if nfe(lo) < target_nfe:
                lo /= 8
            elif nfe(hi) > target_nfe:
                hi *= 8
            else:
                break
        for _ in range(iterations):
            mid = float(f"{math.sqrt(lo * hi):.3g}")  # 3 significant digits: the stored value is the one measured
            if mid in (lo, hi):
                break
            if nfe(mid) > target_nfe:
                lo = mid
            else:
                hi = mid
            if nfe(mid) == target_nfe:
                break
    best = min(seen.items(), key=lambda kv: (abs(kv[1] - target_nfe), kv[1] > target_nfe, kv[0]))
    return {"method": method, "value": best[0], "nfe": best[1], "target_nfe": float(target_nfe),
            "num_inference_steps": ctx.num_inference_steps, "prompts": list(prompts), "seeds": [int(s) for s in seeds],
            "evaluations": sorted([[k, v] for k, v in seen.items()])}


def tune_values(pipe, methods: Sequence[str], targets: Sequence[float], prompts: Sequence[str],
                seeds: Sequence[int] = (0,), ctx: MethodContext | None = None, guidance_scale: float = 5.0,
                progress: bool = True) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """Per method, the thresholds that hit each target NFE on ``prompts`` (calibration prompts).

    Returns (values for :func:`compare`, the tuning records). Methods without a threshold are left out.
    """
    from tqdm.auto import tqdm

    values, records = {}, {}
    todo = [m for m in methods if get_method(m).param is not None]
    bar = tqdm(total=len(todo) * len(targets), desc="tune thresholds", disable=not progress, leave=False)
    for m in todo:
        cache: dict = {}
        records[m] = []
        for target in targets:
            records[m].append(tune_threshold(pipe, m, target, prompts, seeds, ctx, guidance_scale, cache=cache))
            bar.update(1)
        values[m] = list(dict.fromkeys(r["value"] for r in records[m]))
    bar.close()
    return values, records


def parse_set(items: Sequence[str]) -> dict[str, list]:
    """``["magcache=0.1,0.2", "fixed=3"]`` -> ``{"magcache": [0.1, 0.2], "fixed": [3.0]}``."""
    out: dict[str, list] = {}
    for item in items or ():
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise SenCacheError(f"--set takes METHOD=VALUE[,VALUE...], got {item!r}")
        get_method(name.strip())
        try:
            out[name.strip()] = [float(v) for v in rest.split(",") if v.strip()]
        except ValueError:
            raise SenCacheError(f"--set {item!r}: values must be numbers") from None
    return out


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    from .methods import METHODS

    p = subparsers.add_parser(
        "compare", help="compare caching methods against the uncached reference (NFE, time, PSNR, SSIM, LPIPS)",
        description="Run every method on every prompt x seed, next to the uncached reference; write results.json, "
                    "results.md and pareto.png (and, with --report, side_by_side.mp4/.gif and report.html).")
    p.add_argument("--model", default=None, help="diffusers pipeline folder (default: the shipped demo model)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["sencache", "magcache", "magcache-final", "teacache", "fixed"],
                   metavar="METHOD", help=f"from: {', '.join(METHODS)}")
    p.add_argument("--sweep", action="store_true", help="run every method over its list of thresholds")
    p.add_argument("--set", action="append", default=[], metavar="METHOD=V[,V...]",
                   help="pin a method's threshold(s), e.g. --set magcache=0.1,0.2 (repeatable)")
    p.add_argument("--nfe-targets", type=float, nargs="+", default=None, metavar="NFE",
                   help="instead of fixed thresholds: for each method, find the thresholds that give these NFEs on "
                        "the first calibration prompt, then evaluate those")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--profile", default=None, help="sensitivity profile JSON (default: the demo model's)")
    p.add_argument("--baselines", default=None, help="baselines JSON (default: baselines.json next to the profile; "
                   "calibrated there on first use)")
    p.add_argument("--out", default="sencache_compare", help="output folder (default sencache_compare/)")
    p.add_argument("--report", action="store_true", help="also write side_by_side.mp4/.gif and report.html")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    add_threads_argument(p)
    p.set_defaults(func=_run_cli)


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo model is small, and more threads than free "
                             "cores slow torch down many times over)")


def set_threads(n: int) -> None:
    import torch

    if n < 1:
        raise SenCacheError("--threads must be at least 1")
    torch.set_num_threads(n)


def _needs(methods: Sequence[str]) -> set[str]:
    needs = set()
    for m in methods:
        needs.update(get_method(m).needs)
    return needs


def load_profile_if_needed(path, methods: Sequence[str]):
    from .profile import SensitivityProfile

    path = Path(path)
    if path.is_file():
        return SensitivityProfile.load(path)
    if "profile" in _needs(methods):
        raise SenCacheError(f"no sensitivity profile at {path}: run `sencache calibrate` first or pass --profile")
    return None


def _run_cli(args) -> int:
    from .baseline_calibration import default_baselines_path, ensure_baselines
    from . import distributed as dist
    from .demo_model import DEFAULT_MODEL_DIR, DEFAULT_PROFILE
    from .loading import load_pipeline

    for m in args.methods:
        get_method(m)  # unknown names fail before anything loads
    set_threads(args.threads)
    dist.init_if_needed()  # under torchrun: jobs are sharded over the ranks, rank 0 writes the results
    if args.steps < 2:
        raise SenCacheError("--steps must be at least 2")
    prompts = read_prompts(args.prompts)
    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    pipe = load_pipeline(model)
    profile_path = Path(args.profile) if args.profile else DEFAULT_PROFILE
    profile = load_profile_if_needed(profile_path, args.methods)
    baselines = baselines_path = None
    if "baselines" in _needs(args.methods):
        baselines_path = Path(args.baselines) if args.baselines else default_baselines_path(profile_path)
        want = baselines_path
        baselines, baselines_path = _on_main(lambda: ensure_baselines(  # calibrated (and saved) once, by rank 0
            pipe, want, prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, fallback_dir=args.out))
    start = time.perf_counter()
    values, tuning = parse_set(args.set), None
    if args.nfe_targets:
        if baselines is None:
            raise SenCacheError("--nfe-targets tunes on the calibration prompts of the baselines: include a method "
                                "that needs them (magcache, teacache, ...) or pass --baselines")
        ctx = MethodContext(num_inference_steps=args.steps, profile=profile, baselines=baselines)
        tuned, tuning = _on_main(lambda: tune_values(  # rank 0 tunes; every rank evaluates the same values
            pipe, args.methods, args.nfe_targets, baselines.calibration_prompts[:1],
            baselines.calibration_seeds[:1], ctx, args.guidance))
        values = {**tuned, **values}
    results = compare(pipe, prompts, args.seeds, args.methods, sweep=args.sweep, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, out_dir=args.out, profile=profile, baselines=baselines,
                      values=values, use_lpips=False if args.no_lpips else None, model=str(model),
                      profile_path=profile_path, baselines_path=baselines_path, keep_going=True)
    if results is None:  # another rank: rank 0 writes and reports
        return 0
    if tuning:
        results["tuning"] = tuning
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    if args.report:
        from .report import write_report

        write_report(args.out, results)
    from .report import text_table

    print(text_table(results))
    print(f"\n{len(results['jobs'])} job(s) in {time.perf_counter() - start:.1f} s; results in {Path(args.out).resolve()}")
    for f in results["failures"]:
        print(f"failed: job {f['job']} {f['prompt']!r} seed {f['seed']} on rank {f['rank']}: {f['error']}",
              file=sys.stderr)
    return 1 if results["failures"] else 0
