"""`sencache generate`: one or many clips through an unchanged pipeline, cached or not.

With ``--prompts FILE`` under ``torchrun --nproc_per_node=K`` the prompt × seed jobs are sharded
round-robin over the ranks; every rank writes its own clips, and rank 0 gathers the per-clip
records into ``OUT/generate.json`` in job order, so the file is the same as a single-process run.
A job that fails is recorded with its prompt and error; the other jobs still finish.
``--save-npy`` also writes each clip's raw frames (float32, (F, H, W, 3) in [0, 1]) as ``STEM.npy``,
to compare runs exactly (an MP4 is lossy and its encoder need not be deterministic).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from sencache.adapter.hooks import active_session
from sencache.calibration.baselines import Baselines, default_baselines_path
from sencache.cli.options import (
    add_model_arguments,
    load_model,
    resolve_device,
    resolve_model,
    resolve_profile_path,
    seed_value,
    set_threads,
    step_count,
)
from sencache.core.budget import budget_steps, recommended_eps, with_target
from sencache.core.presets import PRESETS
from sencache.core.profile import SensitivityProfile
from sencache.core.rules.sencache import SenCacheConfig
from sencache.errors import SenCacheError
from sencache.methods import MethodContext, get_method
from sencache.methods.ours import SessionHandle
from sencache.runtime import distributed as dist
from sencache.runtime.generation import generate
from sencache.runtime.prompts import read_prompts
from sencache.runtime.video import save_clip

CLIP_SUFFIXES = (".mp4", ".gif", ".npy")  # what --out may end in; any other dot belongs to the name


def clip_stem(out: Path) -> Path:
    """The stem every file of a one-clip run is named by: ``take.v1`` and ``wan2.1-fast`` stay whole, ``clip.mp4``
    loses its ``.mp4`` (the clip is written as .mp4 and .gif)."""
    return out.with_suffix("") if out.suffix.lower() in CLIP_SUFFIXES else out


def clip_files(stem: Path, save_npy: bool, trace: bool) -> list[Path]:
    """Every file one clip writes."""
    names = [".mp4", ".gif"] + ([".npy"] if save_npy else []) + ([".trace.json"] if trace else [])
    return [Path(f"{stem}{suffix}") for suffix in names]


def check_outputs(files: list[Path], overwrite: bool) -> None:
    """Refuse, before any model loads, outputs that cannot be written or would replace earlier ones."""
    for path in files:
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise SenCacheError(f"cannot write {path}: {parent} is a file, not a folder; choose another --out")
        if path.is_dir():
            raise SenCacheError(f"cannot write {path}: it is a folder; choose another --out")
    existing = [p for p in files if p.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise SenCacheError(f"{existing[0]}{more} already exist(s); choose another --out, or pass --overwrite to "
                            f"replace")


def clip_name(index: int, prompt: str, seed: int) -> str:
    """File stem of one clip: job index, a slug of the prompt, the seed."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    return f"{index:03d}_{slug}_s{seed}"


def check_cache_options(args) -> None:
    """The cache flags that contradict each other, refused before anything loads."""
    if getattr(args, "target_psnr", None) is not None and (args.cache != "sencache" or args.preset):
        raise SenCacheError("--target-psnr is the closed-loop SenCache's quality target; use it with --cache sencache "
                            "and without --preset")
    if getattr(args, "target_nfe", None) is not None:
        if args.cache != "sencache" or args.preset or args.eps is not None or getattr(args, "target_psnr", None):
            raise SenCacheError("--target-nfe is SenCache's budget mode; use it with --cache sencache and without "
                                "--eps, --preset or --target-psnr")
        if not (np.isfinite(args.target_nfe) and 1 <= args.target_nfe <= args.steps):
            raise SenCacheError(f"--target-nfe must be between 1 and --steps {args.steps} (got {args.target_nfe:g})")
    if args.preset and args.cache != "sencache":
        raise SenCacheError(f"--preset sets SenCache's own settings; use it with --cache sencache (not {args.cache})")
    get_method(args.cache)  # an unknown name fails here


def attach_cache(args, pipe):
    """Apply the method asked for on the command line (its flags already passed :func:`check_cache_options`);
    returns a handle with ``stats()`` and ``remove()``."""
    spec = get_method(args.cache)
    profile_path = resolve_profile_path(args.profile, resolve_model(args.model))
    ctx = MethodContext(num_inference_steps=args.steps)
    value = args.eps
    if "profile" in spec.needs:
        if not profile_path.exists():
            raise SenCacheError(f"no profile at {profile_path}; "
                                f"measure one with `sencache calibrate --out {profile_path}`")
        ctx.profile = SensitivityProfile.load(profile_path)
        if args.preset:
            overrides = {} if value is None else {"eps": value}
            return SessionHandle(pipe, SenCacheConfig.preset(args.preset, ctx.profile, **overrides))
        if getattr(args, "target_psnr", None) is not None:
            return SessionHandle(pipe, SenCacheConfig(ctx.profile, eps=value, target_psnr=args.target_psnr))
        if getattr(args, "target_nfe", None) is not None:
            return SessionHandle(pipe, budget_config(ctx.profile, args.target_nfe, args.steps))
        if value is None:
            value = recommended_eps(ctx.profile, num_inference_steps=args.steps)
    if "baselines" in spec.needs:
        path = default_baselines_path(profile_path)
        if not path.exists():
            raise SenCacheError(f"{args.cache} needs calibrated baselines at {path}; run `sencache demo` once "
                                f"or `sencache compare`, which calibrate them")
        ctx.baselines = Baselines.load(path)
    reason = spec.unavailable(ctx, pipe)
    if reason:
        raise SenCacheError(f"{args.cache}: {reason}")
    # our caches report their own NFE (the adapter's trace); the others are counted from outside
    return spec.apply(pipe, value, ctx, count=spec.family != "ours")


def budget_config(profile, target_nfe: float, steps: int) -> SenCacheConfig:
    """SenCache in budget mode for ``--target-nfe``: the default rule for the model and budget, its ε replayed on
    the profile's calibration runs (which must have been measured at ``steps`` steps)."""
    config = SenCacheConfig(profile)
    solved_at = budget_steps(profile)
    if solved_at is not None and solved_at != steps:
        raise SenCacheError(f"--target-nfe counts steps of the profile's calibration ({solved_at} steps), not "
                            f"{steps}: keep --steps {solved_at}, pass --eps, or calibrate on {steps} steps")
    config = with_target(config, float(target_nfe))
    print(f"budget mode: the {config.budget['rule_name']} rule at eps {config.eps:.4g} "
          f"(simulated NFE {config.budget['simulated_nfe']:g} of {steps} on the calibration runs)")
    return config


def run_jobs(args) -> int:
    """``sencache generate``: every prompt x seed (sharded under torchrun), clips and records written."""
    set_threads(args.threads)
    dist.init_if_needed()
    target = getattr(args, "target_psnr", None)
    if target is not None and not (np.isfinite(target) and target > 0):
        raise SenCacheError(f"--target-psnr must be a number of dB > 0 (got {target:g})")
    check_cache_options(args)
    if args.prompt is not None and not args.prompt.strip():
        raise SenCacheError("--prompt is empty; give the text of the clip (or --prompts FILE)")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    jobs = [(p, s) for p in prompts for s in args.seeds]
    single = len(jobs) == 1 and not args.prompts
    out = Path(args.out)
    out_dir = out.parent if single else out
    stems = [clip_stem(out)] if single else [out_dir / clip_name(i, p, s) for i, (p, s) in enumerate(jobs)]
    files = [f for stem in stems for f in clip_files(stem, args.save_npy, args.trace)]
    check_outputs(files + ([] if single else [out_dir / "generate.json"]), args.overwrite)
    resolve_device(args.device)  # a device this machine lacks is refused before the model loads
    if "profile" in get_method(args.cache).needs:  # a hub id without --profile fails before a long load
        resolve_profile_path(args.profile, resolve_model(args.model))
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe, _ = load_model(args)
    handle = attach_cache(args, pipe)
    records = []
    for index, (prompt, seed) in dist.shard(jobs):
        stem = stems[index]
        try:
            result = generate(pipe, prompt, seed, num_inference_steps=args.steps, guidance_scale=args.guidance)
        except Exception as exc:  # keep the other jobs' results; say which prompt failed
            records.append({"index": index, "prompt": prompt, "seed": seed, "rank": dist.rank(),
                            "error": f"{type(exc).__name__}: {exc}"})
            print(f"[rank {dist.rank()}] FAILED {prompt!r} seed {seed}: {exc}", file=sys.stderr)
            continue
        paths = save_clip(result.frames, stem)
        if args.save_npy:
            paths.append(Path(str(stem) + ".npy"))
            np.save(paths[-1], result.frames)
        stats = handle.stats()
        summary = stats["trace"] if "trace" in stats else stats  # ours: the adapter's trace summary
        session = active_session(pipe)
        if session is not None and args.trace:
            session.trace.save(Path(str(stem) + ".trace.json"))
        record = {"index": index, "prompt": prompt, "seed": seed, "cache": args.cache,
                  "nfe": summary["nfe"], "steps": args.steps, "seconds": round(result.seconds, 3),
                  "files": [str(p) for p in paths]}
        predicted = summary.get("predicted_psnr_per_sample")
        if predicted:
            record["predicted_psnr"] = predicted[0]
        records.append(record)
        note = f", predicted PSNR {predicted[0]:.1f} dB" if predicted and predicted[0] is not None else ""
        print(f"{prompt!r} seed {seed}: NFE {summary['nfe']}/{args.steps}{note}, {result.seconds:.2f} s -> {paths[0]}")
    gathered = dist.gather_objects(records)
    if not dist.is_main():
        return 0
    merged = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    failed = [r for r in merged if "error" in r]
    if not single:
        (out_dir / "generate.json").write_text(json.dumps({"jobs": merged}, indent=1))
        print(f"{len(merged) - len(failed)} clips written to {out_dir}; records in {out_dir / 'generate.json'}")
    for r in failed:
        print(f"failed: {r['prompt']!r} seed {r['seed']} on rank {r['rank']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def add_cli(sub) -> None:
    """Register ``sencache generate`` and its options on ``sub``."""
    p = sub.add_parser("generate", help="generate clips with the shipped (or any) model, cached or not")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="file with one prompt per line (sharded under torchrun)")
    p.add_argument("--cache", default="sencache", help="sencache (default), none, magcache, teacache, fixed, "
                   "fbcache, seacache, taylorseer, dbcache, ... (see `sencache compare --help`)")
    p.add_argument("--eps", type=float, default=None,
                   help="the method's threshold (SenCache: eps; default: the profile's recommended eps)")
    p.add_argument("--target-nfe", type=float, default=None, metavar="N",
                   help="SenCache's budget mode: about N computed steps per clip; the rule (closed loop or "
                        "eps-schedule) is the default for the model family and budget, its eps replayed on the "
                        "profile's calibration runs")
    p.add_argument("--target-psnr", type=float, default=None,
                   help="SenCache's quality target (dB against the uncached clip): each sample reuses while its "
                        "predicted PSNR stays at or above it; needs a profile with the closed-loop calibration")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="the paper's (or the reference code's) published settings for a model, on --profile "
                        "(--eps still overrides its eps); see the README's presets table")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny demo model)")
    add_model_arguments(p)
    p.add_argument("--steps", type=step_count, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=seed_value, nargs="+", default=[0])
    p.add_argument("--out", default="clip.mp4", help="output file (one prompt) or folder (--prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace clips an earlier run wrote under the same name")
    p.add_argument("--trace", action="store_true", help="also save each clip's decision trace as JSON")
    p.add_argument("--save-npy", action="store_true",
                   help="also save each clip's raw frames as STEM.npy (float32, F x H x W x 3, in [0, 1])")
    p.set_defaults(func=run_jobs)
