"""`sencache demo`: the project page, reproduced on the shipped demo models: for each system (Wan, CogVideoX,
LTX-Video architectures), uncached | MagCache | SenCache on held-out prompts at the same seed and about the same
NFE, with heat maps of where each cached clip departs from the uncached one and a caption naming the object that
differs most between the two caches.

Per system: loads the model and its profile, loads ``OUT/<system>/baselines.json`` (from an earlier run) or the
``baselines.json`` next to the profile, or calibrates MagCache/TeaCache on the demo's calibration prompts first
(said on screen), chooses each method's threshold for the target NFE on a calibration prompt, runs
:func:`sencache.harness.demo.run_demo` into ``OUT/<system>/``. Then writes ``OUT/side_by_side.gif``/``.mp4`` (all
systems) and ``OUT/report.html``. Anything calibrated or tuned is stored in ``OUT/<system>/baselines.json``:
nothing is written inside the installed package. ``--quick``: one prompt, no LPIPS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sencache.calibration.baselines import BASELINES_NAME, default_baselines_path, ensure_baselines
from sencache.cli.options import (
    add_model_arguments,
    add_threads_argument,
    load_model,
    resolve_profile_path,
    seed_value,
    set_threads,
    step_count,
)
from sencache.core.profile import SensitivityProfile
from sencache.demo_model.difference import difference_caption
from sencache.demo_model.prompts import (
    default_calibration_prompts,
    default_evaluation_prompts,
)
from sencache.demo_model.systems import SYSTEMS, title, weights_dir
from sencache.errors import SenCacheError
from sencache.harness.demo import SEED_PAGE_METHODS, run_demo
from sencache.report.frames import load_frames
from sencache.report.seed_page import SystemRun, write_seed_page
from sencache.report.tables import primary_rows, text_table

DEFAULT_OUT = "sencache_demo"
NAMES = {"magcache-fast": "MagCache", "sencache": "SenCache"}


def add_cli(subparsers) -> None:
    """Register ``sencache demo`` and its options on ``subparsers``."""
    p = subparsers.add_parser(
        "demo", help="uncached vs MagCache vs SenCache on the demo models of three architectures: the project page",
        description="Runs the uncached demo models and two caches at about the same NFE on held-out prompts, and "
                    "writes side_by_side.mp4/.gif with difference heat maps, report.html, and results.json per system.")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS),
                   help="which shipped demo models to run (default: all three)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--prompts", type=int, default=2, help="held-out prompts, one row each (default 2)")
    p.add_argument("--steps", type=step_count, default=50, help="denoising steps (default 50)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of every prompt (default 0)")
    p.add_argument("--target", type=float, default=0.3,
                   help="target NFE as a fraction of the steps, the same for every method (default 0.3: 15 of 50, "
                        "where the caches' differences show)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    add_model_arguments(p, sizes=False)
    p.add_argument("--retune", action="store_true", help="search the thresholds again even if stored")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--quick", action="store_true",
                   help="a short check that every system loads and generates: one prompt, no LPIPS (about 40 s on "
                        "2 CPU cores)")
    add_threads_argument(p)
    p.set_defaults(func=run)


def _systems(args) -> list[tuple[str, str, Path | None]]:
    """(name, title, model folder) per system; ``--model`` runs that one folder instead of the shipped models."""
    if args.model is not None:
        return [(Path(args.model).name or "model", str(args.model), None)]
    chosen = []
    for name in dict.fromkeys(args.systems):
        folder = weights_dir(name)
        if not (folder / "model_index.json").is_file():
            raise SenCacheError(f"the {name} demo model is not shipped in {folder}; train it (docs/demo_model.md) "
                                f"or leave it out: --systems {' '.join(s for s in args.systems if s != name) or 'wan'}")
        chosen.append((name, title(name), folder))
    return chosen


def run(args) -> int:
    """``sencache demo``."""
    start = time.perf_counter()
    set_threads(args.threads)
    if args.quick:
        args.prompts, args.no_lpips = 1, True
    if args.prompts < 1:  # every argument is checked before anything loads or calibrates
        raise SenCacheError("--prompts must be at least 1")
    if args.steps < 4:
        raise SenCacheError("--steps must be at least 4")
    if not 0.0 < args.target <= 1.0:
        raise SenCacheError("--target must be a fraction of the steps in (0, 1]")
    systems = _systems(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = default_calibration_prompts()
    runs = []
    for name, system_title, folder in systems:
        print(f"== {system_title}")
        pipe, model = load_model(argparse.Namespace(**{**vars(args), "model": folder or args.model}))
        profile_path = resolve_profile_path(args.profile if folder is None else None, model)
        if not profile_path.is_file():
            raise SenCacheError(f"no sensitivity profile at {profile_path}: measure one with `sencache calibrate` "
                                f"(or pass --profile)")
        profile = SensitivityProfile.load(profile_path)
        # thresholds tuned here (another --steps, --target or --retune) go to OUT/<system>/, never into the package
        baselines_path = out / name / BASELINES_NAME
        baselines, _ = ensure_baselines(
            pipe, default_baselines_path(profile_path), (), calibration_prompts=calibration,
            num_inference_steps=args.steps, guidance_scale=args.guidance, fallback_dir=out / name,
            save_path=baselines_path)
        excluded = list(baselines.calibration_prompts) + list(profile.metadata.get("prompts") or [])
        prompts = default_evaluation_prompts(args.prompts, exclude=excluded)
        results = run_demo(pipe, profile, baselines, baselines_path, prompts, out / name, steps=args.steps,
                           seed=args.seed, target=args.target, guidance=args.guidance, profile_path=profile_path,
                           retune=args.retune, use_lpips=False if args.no_lpips else None, model=str(model),
                           methods=SEED_PAGE_METHODS)
        frames = load_frames(out / name / "frames.npz")
        runs.append(SystemRun(name, system_title, results, frames, _captions(results, frames),
                              report=f"{name}/report.html", display=NAMES))
        print(text_table(results, primary_only=True))
    files = write_seed_page(out, runs)
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Files in {out.resolve()}:")
    for name in ("side_by_side.mp4", "side_by_side.gif", "report.html"):
        print(f"  {files[name].resolve()}")
    for run_ in runs:
        print(f"  {(out / run_.name / 'results.json').resolve()}")
    return 0


def _captions(results: dict, frames: dict) -> list[str]:
    """"Difference: the ..." per job, from the caption's objects, between MagCache and SenCache; none for a prompt
    outside the demo captions' grammar."""
    keys = {row["method"]: row["key"] for row in primary_rows(results)}
    captions = []
    for job in results.get("jobs", []):
        clip = lambda key: frames[f"{job['job']}|{key}"]  # noqa: E731
        try:
            first, second = SEED_PAGE_METHODS
            captions.append(difference_caption(job["prompt"], clip("none"), clip(keys[first]), clip(keys[second]),
                                               (NAMES[first], NAMES[second])))
        except (ValueError, KeyError):
            captions.append("")
    return captions
