"""Run caching methods side by side on the same prompts and seeds, against the uncached reference.

    results = compare(pipe, prompts, seeds, ["sencache", "magcache", "teacache"], sweep=True,
                      num_inference_steps=50, out_dir="runs/cmp", profile=profile, baselines=baselines)

For every prompt x seed (a *job*) the uncached reference (``none``, no hooks) runs first; then every method
at every setting (its default threshold, or its whole sweep). Fidelity is PSNR / SSIM / LPIPS of the raw
frames against the reference frames (never an encoded video); cost is the NFE counted by
:class:`sencache.methods.counter.StepCounter` and the wall time of the pipeline call.

The work is cut so that a later change can shard it over ``torchrun`` ranks without touching the rest:
:func:`make_jobs` is a pure function of the prompt and seed lists, :func:`run_job` runs one job and
returns a JSON-able record, :func:`merge_records` combines records from any number of shards in job
order, and :func:`summarize` turns merged records into the results dict.

Outputs in ``out_dir``: ``results.json``, ``results.md``, ``pareto.png`` and ``frames.npz`` (uint8 frames
of the reference and of each method's primary setting, for :func:`sencache.report.page.write_report`).

Under ``torchrun --nproc_per_node=K sencache compare ...`` the jobs are sharded round-robin over the ranks
(:func:`shard_jobs`); rank 0 gathers the records and frames, merges them (:func:`merge_records`) and writes
the outputs once, so ``results.json`` equals a single-process run's apart from wall-clock fields. Threshold
tuning (``--nfe-targets``) and baseline calibration run on rank 0 and are broadcast. A job that fails is
recorded in ``results.json["failures"]`` with its prompt, seed, rank and error; the other jobs still run.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

from sencache.adapter.parallel import parallel_config_of
from sencache.core.default_rule import SCHEDULE
from sencache.core.profile import model_class_name, model_config_hash
from sencache.errors import SenCacheError
from sencache.harness.lpips_weights import lpips_ready
from sencache.harness.metrics import PSNR_CAP_DB
from sencache.harness.runner import against_reference
from sencache.methods import REFERENCE, MethodContext, get_method
from sencache.report.frames import save_frames
from sencache.report.plots import plot_pareto
from sencache.report.tables import markdown_table
from sencache.runtime import distributed as dist
from sencache.runtime.checkpoint import RunCheckpoint
from sencache.runtime.generation import generate
from sencache.runtime.prompts import check_disjoint
from sencache.runtime.video import as_uint8
from sencache.statistics.tails import tail_fields
from sencache.version import __version__

FORMAT = "sencache-compare/1"

__all__ = [
    "Job",
    "Variant",
    "compare",
    "make_jobs",
    "merge_records",
    "plan_variants",
    "run_job",
    "shard_jobs",
    "summarize",
    "write_outputs",
]


# --------------------------------------------------------------------------------------------------
# Plan: jobs and variants (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One prompt and seed of a comparison, with its index in the job list."""
    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Variant:
    """One method at one setting."""

    method: str
    value: Any
    key: str  # "sencache@eps=0.1", "sencache@loop-hold:eps=0.001" (the reference is just "none")
    primary: bool  # the setting shown in videos and schedule plots
    rule: str | None = None  # sencache: the rule it runs (MethodContext.rule); None: the ε-schedule rule

    def context(self, ctx: MethodContext) -> MethodContext:
        """``ctx`` as this variant runs in (its rule set)."""
        return ctx if self.rule is None else replace(ctx, rule=self.rule)


def pinned_value(spec, item) -> tuple[Any, str | None]:
    """(value, rule) of one pinned setting: a number, or for a budget-aware method ``{"rule": r, "value": v}``
    (what :func:`sencache.harness.tuning.tune_values` gives for ``sencache``)."""
    if isinstance(item, dict):
        if not spec.budget_aware:
            raise SenCacheError(f"{spec.name} has one rule: pin it with a number, not {item!r}")
        rule = item.get("rule")
        rule = None if rule in (None, SCHEDULE) else str(rule)
        return spec.coerce(item.get("value")), rule
    return spec.coerce(item), None


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
        primary = pinned_value(spec, primary)
        chosen = sorted({pinned_value(spec, v) for v in chosen}, key=lambda vr: (vr[1] or "", vr[0]))
        for v, rule in chosen:
            key = f"{name}@{spec.setting_id(v)}" if rule is None else f"{name}@{rule}:{spec.setting_id(v)}"
            variants.append(Variant(name, v, key, (v, rule) == primary, rule))
    return variants, skipped


# --------------------------------------------------------------------------------------------------
# Running one job
# --------------------------------------------------------------------------------------------------


def run_job(pipe, job: Job, variants: Sequence[Variant], ctx: MethodContext, guidance_scale: float = 5.0,
            use_lpips: bool = True, keep_frames: bool = True, progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Reference first, then every variant, on one prompt and seed. Returns (record, frames).

    ``record`` is JSON-able; ``frames`` maps "none" and each primary variant key to uint8 (F, H, W, 3).
    """

    frames: dict[str, np.ndarray] = {}
    gen_kwargs = dict(num_inference_steps=ctx.num_inference_steps, guidance_scale=guidance_scale)

    def on_run(key, run, scores) -> None:
        if progress is not None:
            progress.update(1)
            if key is not None:
                progress.set_postfix_str(f"{key} nfe={run.stats['nfe']} psnr={scores['psnr']:.1f}")

    caches = {v.key: (lambda v=v: get_method(v.method).apply(pipe, v.value, v.context(ctx))) for v in variants}
    ref, results = against_reference(pipe, job.prompt, job.seed, gen_kwargs, caches, use_lpips,
                                     reference=lambda: get_method(REFERENCE).apply(pipe, None, ctx), on_run=on_run)
    ref_stats = {"wall_s": ref.seconds, **ref.stats}
    if keep_frames:
        frames[REFERENCE] = as_uint8(ref.frames)
    runs = {}
    for v in variants:
        run, scores = results[v.key]
        stats = {"wall_s": run.seconds, **run.stats}
        entry = {"method": v.method, "value": v.value, **({"rule": v.rule} if v.rule else {}), **stats, **scores}
        entry["speedup"] = ref_stats["wall_s"] / stats["wall_s"] if stats["wall_s"] > 0 else None
        runs[v.key] = entry
        if keep_frames and v.primary:
            frames[v.key] = as_uint8(run.frames)
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
              calibration: dict | None = None, notes: Sequence[str] = (), device: str = "cpu",
              dtype: str = "float32") -> dict:
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
        per_prompt = [
            {"job": r["job"], "prompt": r["prompt"], "seed": r["seed"], "nfe": run["nfe"],
             "wall_s": run["wall_s"], "speedup": run["speedup"], "psnr": run["psnr"], "ssim": run["ssim"],
             "lpips": run["lpips"], "skipped_steps": run["skipped_steps"]}
            for r, run in runs
        ]
        entry["settings"].append({
            "key": v.key,
            "value": v.value,
            "primary": v.primary,
            **({"rule": v.rule} if v.rule else {}),
            "setting": spec.setting(v.value, v.context(ctx)),
            "nfe": _mean(run["nfe"] for _, run in runs),
            "nfe_fraction": (_mean(run["nfe"] for _, run in runs) or 0.0) / T,
            "wall_s": wall,
            "speedup": (ref_wall / wall) if (ref_wall and wall) else None,
            "psnr": _mean(run["psnr"] for _, run in runs),
            "psnr_capped": all(run["psnr_capped"] for _, run in runs),
            "ssim": _mean(run["ssim"] for _, run in runs),
            "lpips": _mean(run["lpips"] for _, run in runs),
            "schedule": runs[0][1]["schedule"] if runs else [],
            **tail_fields(per_prompt),
            "per_prompt": per_prompt,
        })
    for name, reason in skipped.items():
        spec = get_method(name)
        methods[name] = {"family": spec.family, "description": spec.description, "param": spec.param,
                         "available": False, "skipped": reason, "settings": []}
    return {
        "format": FORMAT,
        "model": model,
        "num_inference_steps": T,
        "guidance_scale": guidance_scale,
        "psnr_cap_db": PSNR_CAP_DB,
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
            "threads": torch.get_num_threads(), "device": device, "dtype": dtype,
            "python": platform.python_version(),
        },
    }


def where_it_ran(pipe) -> dict:
    """The device and dtype the pipeline's denoiser actually ran in (what results record)."""
    transformer = getattr(pipe, "transformer", None)
    param = next(transformer.parameters(), None) if isinstance(transformer, torch.nn.Module) else None
    if param is None:
        return {"device": "unknown", "dtype": "unknown"}
    name = torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else None
    device = str(param.device) + (f" ({name})" if name else "")
    return {"device": device, "dtype": str(param.dtype).removeprefix("torch.")}


def write_outputs(results: dict, out_dir, frames: dict | None = None) -> dict[str, Path]:
    """results.json, results.md, pareto.png (and frames.npz when frames are given) in ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results.json": out / "results.json", "results.md": out / "results.md", "pareto.png": out / "pareto.png"}
    paths["results.json"].write_text(json.dumps(results, indent=1, allow_nan=False))
    paths["results.md"].write_text(markdown_table(results))
    plot_pareto(results, paths["pareto.png"])
    if frames:
        paths["frames.npz"] = save_frames(out / "frames.npz", frames)
    return paths


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def calibration_info(profile=None, baselines=None, profile_path=None, baselines_path=None) -> dict:
    """What the results record of the calibration behind them: the profile's and baselines' prompts, seeds, paths."""
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

    if baselines is not None:
        check_disjoint(baselines.calibration_prompts, prompts, "baseline calibration (baselines.json)")
    if profile is not None and profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")


@dataclass
class ComparePlan:
    """What a comparison will run: the settings of every method, the jobs (this rank's share), how it records."""

    ctx: MethodContext
    variants: list
    skipped: dict
    jobs: list
    mine: list  # this rank's jobs
    rank: int
    shard: bool
    keep_going: bool
    use_lpips: bool
    notes: list
    checkpoint: RunCheckpoint | None


def plan_comparison(pipe, prompts, seeds, methods, sweep, num_inference_steps, guidance_scale, profile, baselines,
                    values, use_lpips, shard, keep_going, checkpoint, resume, keep_frames) -> ComparePlan:
    """Check the prompts are held out, pick every method's settings, split the jobs over the ranks, open the
    checkpoint (see :func:`compare` for the arguments)."""
    if shard is None:
        shard = dist.group_active() and parallel_config_of(getattr(pipe, "transformer", None)) is None
    shard = bool(shard) and dist.group_active()
    check_held_out(prompts, profile, baselines)
    ctx = MethodContext(num_inference_steps=int(num_inference_steps), profile=profile, baselines=baselines)
    variants, skipped = plan_variants(methods, sweep, values, ctx, pipe)
    for name, reason in skipped.items():
        if not get_method(name).skipped_when_unavailable:
            raise SenCacheError(f"{name} cannot run: {reason.removeprefix('skipped: ')}")
    notes = []
    if use_lpips is None:
        use_lpips = lpips_ready()
        if not use_lpips:
            notes.append("LPIPS not computed: weights missing (python scripts/fetch_lpips_weights.py)")
    jobs = make_jobs(prompts, seeds)
    rank = dist.rank() if shard else 0
    saved = None
    if checkpoint is not None:
        transformer = getattr(pipe, "transformer", None)
        saved = RunCheckpoint(checkpoint, {
            "model_class": model_class_name(transformer), "config_hash": model_config_hash(transformer),
            "jobs": [[j.index, j.prompt, j.seed] for j in jobs], "steps": int(num_inference_steps),
            "guidance": float(guidance_scale), "lpips": bool(use_lpips), "frames": keep_frames,
            "variants": [[v.key, v.method, v.value] for v in variants]}, resume=resume, what="comparison")
    return ComparePlan(ctx=ctx, variants=variants, skipped=skipped, jobs=jobs,
                       mine=shard_jobs(jobs, rank, dist.world_size()) if shard else jobs, rank=rank, shard=shard,
                       keep_going=shard if keep_going is None else bool(keep_going), use_lpips=bool(use_lpips),
                       notes=notes, checkpoint=saved)


def run_planned(pipe, plan: ComparePlan, guidance_scale: float, keep_frames: bool, progress: bool,
                warmup: bool) -> tuple[list, list, dict]:
    """This rank's jobs (a finished one read back from the checkpoint): (records, failures, frames)."""
    if warmup and plan.mine:  # first-call costs (allocations, lazy init) must not land on the first timed run
        try:
            generate(pipe, plan.mine[0].prompt, plan.mine[0].seed, num_inference_steps=2,
                     guidance_scale=guidance_scale)
        except Exception:
            if not plan.keep_going:
                raise  # otherwise the job itself fails below and is recorded with its prompt
    per_job = 1 + len(plan.variants)
    bar = tqdm(total=len(plan.mine) * per_job, desc="compare", unit="run", disable=not progress or plan.rank != 0)
    records, failures, frames = [], [], {}
    try:
        for job in plan.mine:
            done = plan.checkpoint.load(job.index) if plan.checkpoint is not None else None
            if done is None:
                try:
                    done = run_job(pipe, job, plan.variants, plan.ctx, guidance_scale, plan.use_lpips,
                                   keep_frames=keep_frames, progress=bar)
                except Exception as exc:
                    if not plan.keep_going:
                        raise
                    failures.append({"job": job.index, "prompt": job.prompt, "seed": job.seed, "rank": plan.rank,
                                     "error": f"{type(exc).__name__}: {exc}"})
                    print(f"[rank {plan.rank}] FAILED job {job.index} {job.prompt!r} seed {job.seed}: {exc}",
                          file=sys.stderr)
                    continue
                if plan.checkpoint is not None:
                    plan.checkpoint.save(job.index, *done)
            else:
                bar.update(per_job)
            records.append(done[0])
            frames.update({f"{job.index}|{k}": v for k, v in done[1].items()})
    finally:
        bar.close()
    return records, failures, frames


def gather(plan: ComparePlan, records: list, failures: list, frames: dict) -> tuple[list, list, dict] | None:
    """Every rank's records, failures and frames on rank 0 (None on the others); unsharded, this rank's."""
    if plan.shard:
        parts = dist.gather_objects((records, failures, frames))
        if not dist.is_main():
            return None
        records = merge_records(*(part[0] for part in parts))
        failures = [f for part in parts for f in part[1]]
        frames = {k: v for part in parts for k, v in part[2].items()}
    return merge_records(records), sorted(failures, key=lambda f: f["job"]), frames


def compare(pipe, prompts: Sequence[str], seeds: Sequence[int], methods: Sequence[str], sweep: bool = False,
            num_inference_steps: int = 50, guidance_scale: float = 5.0, out_dir=None, profile=None, baselines=None,
            values: dict | None = None, use_lpips: bool | None = None, progress: bool = True, model: str | None = None,
            profile_path=None, baselines_path=None, warmup: bool = True, shard: bool | None = None,
            keep_going: bool | None = None, checkpoint=None, resume: bool = False) -> dict | None:
    """Compare ``methods`` against the uncached reference on every prompt x seed. Returns the results dict.

    ``values`` pins a method's setting(s) (see :func:`plan_variants`); ``use_lpips=None`` computes LPIPS when
    its weights are installed. With ``out_dir`` the files listed in the module docstring are written there.

    ``shard``: split the jobs over the ranks of the torch.distributed group (default: when one of more
    than one rank is initialised and the transformer is not itself split by diffusers' context
    parallelism, whose ranks must all run every job). Sharded, only rank 0 gets the results (the other
    ranks return None). ``keep_going`` (default: when sharded): record a failing job in
    ``results["failures"]`` and go on, instead of raising.

    ``checkpoint``: a folder where every finished job (record and frames) is written as it completes; with
    ``resume=True`` a comparison interrupted there runs only its unfinished jobs (its arguments must match)
    and gives the same results apart from wall-clock fields. The folder is left for the caller to delete.
    """
    plan = plan_comparison(pipe, prompts, seeds, methods, sweep, num_inference_steps, guidance_scale, profile,
                           baselines, values, use_lpips, shard, keep_going, checkpoint, resume,
                           keep_frames=out_dir is not None)
    gathered = gather(plan, *run_planned(pipe, plan, guidance_scale, out_dir is not None, progress, warmup))
    if gathered is None:
        return None
    records, failures, frames = gathered
    results = summarize(records, plan.variants, plan.skipped, ctx=plan.ctx, guidance_scale=guidance_scale,
                        prompts=prompts, seeds=seeds, model=model,
                        calibration=calibration_info(profile, baselines, profile_path, baselines_path),
                        notes=plan.notes, **where_it_ran(pipe))
    results["failures"] = failures
    if out_dir is not None and (plan.shard or dist.is_main()):  # unsharded ranks (context parallelism) share one run
        results["files"] = {k: str(v) for k, v in write_outputs(results, out_dir, frames).items()}
    return results
