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

from .. import distributed as dist
from ..errors import SenCacheError
from ..prompts import read_prompts


def clip_name(index: int, prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    return f"{index:03d}_{slug}_s{seed}"


def attach_cache(args, pipe):
    """Apply the method asked for on the command line; returns a handle with ``stats()`` and ``remove()``."""
    from ..baseline_calibration import Baselines, default_baselines_path
    from ..methods import MethodContext, get_method
    from ..profile import SensitivityProfile

    spec = get_method(args.cache)
    model_dir = Path(args.model) if args.model else None
    if model_dir is None:
        from ..demo_model import DEFAULT_MODEL_DIR

        model_dir = DEFAULT_MODEL_DIR
    profile_path = Path(args.profile) if args.profile else model_dir / "sencache_profile.json"
    ctx = MethodContext(num_inference_steps=args.steps)
    value = args.eps
    if "profile" in spec.needs:
        if not profile_path.exists():
            raise SenCacheError(f"no profile at {profile_path}; measure one with `sencache calibrate --out {profile_path}`")
        ctx.profile = SensitivityProfile.load(profile_path)
        if value is None:
            from ..budget import recommended_eps

            value = recommended_eps(ctx.profile)
    if "baselines" in spec.needs:
        path = default_baselines_path(profile_path)
        if not path.exists():
            raise SenCacheError(f"{args.cache} needs calibrated baselines at {path}; run `sencache demo` once "
                                f"or `sencache compare`, which calibrate them")
        ctx.baselines = Baselines.load(path)
    reason = spec.unavailable(ctx, pipe)
    if reason:
        raise SenCacheError(f"{args.cache}: {reason}")
    return spec.apply(pipe, value, ctx)


def run_jobs(args) -> int:
    import sencache

    from ..demo_model import load_pipeline
    from ..generation import generate, save_clip

    import torch

    torch.set_num_threads(args.threads)
    dist.init_if_needed()
    prompts = [args.prompt] if args.prompt else read_prompts(args.prompts)
    jobs = [(p, s) for p in prompts for s in args.seeds]
    single = len(jobs) == 1 and not args.prompts
    out = Path(args.out)
    out_dir = out.parent if single else out
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    handle = attach_cache(args, pipe)
    records = []
    for index, (prompt, seed) in dist.shard(jobs):
        stem = out.with_suffix("") if single else out_dir / clip_name(index, prompt, seed)
        try:
            result = generate(pipe, prompt, seed, num_inference_steps=args.steps, guidance_scale=args.guidance)
        except Exception as exc:  # keep the other jobs' results; say which prompt failed
            records.append({"index": index, "prompt": prompt, "seed": seed, "rank": dist.rank(),
                            "error": f"{type(exc).__name__}: {exc}"})
            print(f"[rank {dist.rank()}] FAILED {prompt!r} seed {seed}: {exc}", file=sys.stderr)
            continue
        paths = save_clip(result.frames, stem)
        if args.save_npy:
            import numpy as np

            paths.append(Path(str(stem) + ".npy"))
            np.save(paths[-1], result.frames)
        summary = handle.stats()
        session = sencache.active_session(pipe)
        if session is not None and args.trace:
            session.trace.save(Path(str(stem) + ".trace.json"))
        records.append({"index": index, "prompt": prompt, "seed": seed, "cache": args.cache,
                        "nfe": summary["nfe"], "steps": args.steps, "seconds": round(result.seconds, 3),
                        "files": [str(p) for p in paths]})
        print(f"{prompt!r} seed {seed}: NFE {summary['nfe']}/{args.steps}, {result.seconds:.2f} s -> {paths[0]}")
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
    p = sub.add_parser("generate", help="generate clips with the shipped (or any) model, cached or not")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="file with one prompt per line (sharded under torchrun)")
    p.add_argument("--model", default=None, help="diffusers pipeline folder (default: the shipped demo model)")
    p.add_argument("--cache", default="sencache", help="sencache (default), none, magcache, teacache, fixed, "
                   "fbcache, seacache, taylorseer, dbcache, ... (see `sencache compare --help`)")
    p.add_argument("--eps", type=float, default=None,
                   help="the method's threshold (SenCache: eps; default: the profile's recommended eps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny demo model)")
    p.add_argument("--profile", default=None, help="sensitivity profile JSON (default: next to the model)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="clip.mp4", help="output file (one prompt) or folder (--prompts)")
    p.add_argument("--trace", action="store_true", help="also save each clip's decision trace as JSON")
    p.add_argument("--save-npy", action="store_true",
                   help="also save each clip's raw frames as STEM.npy (float32, F x H x W x 3, in [0, 1])")
    p.set_defaults(func=run_jobs)
