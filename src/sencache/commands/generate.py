"""`sencache generate`: one or many clips through an unchanged pipeline, cached or not.

With ``--prompts FILE`` under ``torchrun --nproc_per_node=K`` the prompt × seed jobs are sharded
round-robin over the ranks; every rank writes its own clips, and rank 0 gathers the per-clip
records into ``OUT/generate.json`` in job order, so the file is the same as a single-process run.
A job that fails is recorded with its prompt and error; the other jobs still finish.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .. import distributed as dist
from ..errors import SenCacheError


def read_prompts(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise SenCacheError(f"prompt file {path} not found")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise SenCacheError(f"prompt file {path} holds no prompts (one per line)")
    return prompts


def clip_name(index: int, prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    return f"{index:03d}_{slug}_s{seed}"


def build_cache_config(args, pipe):
    """The caching config asked for on the command line (None for no cache)."""
    from ..demo_model import DEFAULT_PROFILE
    from ..profile import SensitivityProfile
    from ..rules import FixedConfig, SenCacheConfig

    if args.cache == "none":
        return None
    if args.cache == "fixed":
        return FixedConfig(interval=args.interval, final_steps=1)
    if args.cache == "sencache":
        profile_path = Path(args.profile) if args.profile else Path(args.model or DEFAULT_PROFILE.parent) / "sencache_profile.json"
        if not profile_path.exists():
            raise SenCacheError(f"no profile at {profile_path}; measure one with `sencache calibrate --out {profile_path}`")
        profile = SensitivityProfile.load(profile_path)
        eps = args.eps if args.eps is not None else float(profile.metadata.get("recommended_eps", 0.1))
        return SenCacheConfig(profile, eps=eps, max_reuse=args.max_reuse)
    from ..methods import method_config  # baselines calibrated next to the model

    return method_config(args.cache, pipe, threshold=args.eps)


def run_jobs(args) -> int:
    import sencache

    from ..demo_model import load_pipeline
    from ..generation import generate, save_clip

    dist.init_if_needed()
    prompts = [args.prompt] if args.prompt else read_prompts(args.prompts)
    jobs = [(p, s) for p in prompts for s in args.seeds]
    single = len(jobs) == 1 and not args.prompts
    out = Path(args.out)
    out_dir = out.parent if single else out
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    config = build_cache_config(args, pipe)
    cache = sencache.enable(pipe, config) if config is not None else None
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
        summary = cache.summary() if cache is not None else {"nfe": args.steps, "calls": None}
        if cache is not None and args.trace:
            cache.trace.save(Path(str(stem) + ".trace.json"))
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
    p.add_argument("--cache", default="sencache", choices=["sencache", "none", "fixed", "magcache", "teacache"])
    p.add_argument("--eps", type=float, default=None, help="tolerance (default: the profile's recommended eps)")
    p.add_argument("--max-reuse", type=int, default=3)
    p.add_argument("--interval", type=int, default=2, help="for --cache fixed")
    p.add_argument("--profile", default=None, help="sensitivity profile JSON (default: next to the model)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="clip.mp4", help="output file (one prompt) or folder (--prompts)")
    p.add_argument("--trace", action="store_true", help="also save each clip's decision trace as JSON")
    p.set_defaults(func=run_jobs)
