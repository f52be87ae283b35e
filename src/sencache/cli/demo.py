"""`sencache demo`: SenCache next to MagCache and TeaCache on the shipped demo model, at about the same NFE.

Loads the model and its profile, loads ``baselines.json`` next to the profile or calibrates MagCache/TeaCache
on the demo's calibration prompts first (one uncached run per prompt; said on screen), draws held-out
prompts, and runs :func:`sencache.harness.demo.run_demo`.
"""

from __future__ import annotations

import time
from pathlib import Path

from sencache.calibration.baselines import default_baselines_path, ensure_baselines
from sencache.cli.options import (
    add_model_arguments,
    add_threads_argument,
    load_model,
    resolve_profile_path,
    set_threads,
)
from sencache.core.profile import SensitivityProfile
from sencache.demo_model.prompts import (
    default_calibration_prompts,
    default_evaluation_prompts,
)
from sencache.errors import SenCacheError
from sencache.harness.demo import run_demo
from sencache.harness.report import text_table

DEFAULT_OUT = "sencache_demo"


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="SenCache vs MagCache vs TeaCache on the demo model: side-by-side video and report",
        description="Runs the uncached demo model and three caches at about the same NFE on a few held-out prompts, "
                    "and writes side_by_side.mp4/.gif, report.html and results.json.")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--prompts", type=int, default=4, help="number of held-out prompts (default 4)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of every prompt (default 0)")
    p.add_argument("--target", type=float, default=0.5,
                   help="target NFE as a fraction of the steps, the same for every method (default 0.5)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    add_model_arguments(p, sizes=False)
    p.add_argument("--retune", action="store_true", help="search the thresholds again even if stored")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")

    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """``sencache demo``."""
    start = time.perf_counter()
    set_threads(args.threads)
    if args.prompts < 1:  # every argument is checked before anything loads or calibrates
        raise SenCacheError("--prompts must be at least 1")
    if args.steps < 4:
        raise SenCacheError("--steps must be at least 4")
    if not 0.0 < args.target <= 1.0:
        raise SenCacheError("--target must be a fraction of the steps in (0, 1]")
    pipe, model = load_model(args)
    profile_path = resolve_profile_path(args.profile, model)
    if not profile_path.is_file():
        raise SenCacheError(f"no sensitivity profile at {profile_path}: measure one with `sencache calibrate` "
                            f"(or pass --profile)")
    profile = SensitivityProfile.load(profile_path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baselines, baselines_path = ensure_baselines(
        pipe, default_baselines_path(profile_path), (), calibration_prompts=default_calibration_prompts(),
        num_inference_steps=args.steps, guidance_scale=args.guidance, fallback_dir=out)
    excluded = list(baselines.calibration_prompts) + list(profile.metadata.get("prompts") or [])
    prompts = default_evaluation_prompts(args.prompts, exclude=excluded)
    results = run_demo(pipe, profile, baselines, baselines_path, prompts, out, steps=args.steps, seed=args.seed,
                       target=args.target, guidance=args.guidance, profile_path=profile_path, retune=args.retune,
                       use_lpips=False if args.no_lpips else None, model=str(model))
    out = Path(args.out).resolve()
    print()
    print(text_table(results, primary_only=True))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Files in {out}:")
    for name in ("side_by_side.mp4", "side_by_side.gif", "report.html", "results.json"):
        print(f"  {out / name}")
    return 0
