"""`sencache demo`: SenCache next to MagCache and TeaCache on the shipped demo model, at about the same NFE.

1. Load the demo model and its sensitivity profile.
2. Load ``baselines.json`` next to the profile, or calibrate MagCache/TeaCache on the calibration prompts
   first (one uncached run per calibration prompt; said on screen).
3. Pick each method's threshold for about ``--target`` x T computed steps: stored in ``baselines.json`` by an
   earlier run, or found now by a short bisection on a *calibration* prompt (never an evaluation prompt).
4. Run the uncached reference and the three methods on a few held-out prompts (one seed), and write
   ``side_by_side.mp4``/``.gif``, ``report.html``, ``results.json`` (and the plots) into ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

DEMO_METHODS = ("magcache", "teacache", "sencache")
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
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo model)")
    p.add_argument("--profile", default=None, help="sensitivity profile (default: the demo model's)")
    p.add_argument("--retune", action="store_true", help="search the thresholds again even if stored")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    from ..compare import add_threads_argument

    add_threads_argument(p)
    p.set_defaults(func=run)


def _setting_key(method: str, steps: int, target_nfe: float, guidance: float, profile) -> str:
    key = f"{method}|T={steps}|nfe={target_nfe:g}|g={guidance:g}"
    if method == "sencache" and profile is not None:
        from ..rules.sencache import DEFAULT_EPS_SCHEDULE

        digest = hashlib.sha256(json.dumps(profile.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        key += f"|profile={digest}|schedule={DEFAULT_EPS_SCHEDULE}"  # a threshold holds for one rule only
    return key


def choose_settings(pipe, baselines, baselines_path, profile, methods, steps: int, target_nfe: float,
                    guidance: float, retune: bool = False, log=print) -> dict[str, dict]:
    """Threshold per method for ``target_nfe``: stored in the baselines, or tuned on a calibration prompt."""
    from ..compare import tune_threshold
    from ..methods import MethodContext, get_method

    ctx = MethodContext(num_inference_steps=steps, profile=profile, baselines=baselines)
    prompts, seeds = baselines.calibration_prompts[:1], baselines.calibration_seeds[:1]
    chosen, changed = {}, False
    for method in methods:
        key = _setting_key(method, steps, target_nfe, guidance, profile)
        stored = baselines.settings.get(key)
        if stored is not None and not retune:
            chosen[method] = stored
            continue
        start = time.perf_counter()
        found = tune_threshold(pipe, method, target_nfe, prompts, seeds, ctx, guidance_scale=guidance, iterations=6)
        found["seconds"] = round(time.perf_counter() - start, 1)
        param = get_method(method).param
        log(f"  {method}: {param} {found['value']:g} gives NFE {found['nfe']:g} on the calibration prompt "
            f"({len(found['evaluations'])} runs, {found['seconds']:.0f} s)")
        baselines.settings[key] = found
        chosen[method] = found
        changed = True
    if changed:
        try:
            baselines.save(baselines_path)
        except OSError as exc:
            log(f"  (could not store the thresholds in {baselines_path}: {exc.strerror or exc})")
    return chosen


def run_demo(pipe, profile, out_dir, n_prompts: int = 4, steps: int = 50, seed: int = 0, target: float = 0.5,
             guidance: float = 5.0, baselines_path=None, profile_path=None, retune: bool = False,
             use_lpips: bool | None = None, model: str | None = None, log=print, progress: bool = True) -> dict:
    from ..baseline_calibration import default_evaluation_prompts, ensure_baselines
    from ..compare import compare
    from ..errors import SenCacheError
    from ..report import write_report

    if n_prompts < 1:
        raise SenCacheError("--prompts must be at least 1")
    if steps < 4:
        raise SenCacheError("--steps must be at least 4")
    if not 0.0 < target <= 1.0:
        raise SenCacheError("--target must be a fraction of the steps in (0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    baselines, baselines_path = ensure_baselines(pipe, baselines_path, (), num_inference_steps=steps,
                                                 guidance_scale=guidance, fallback_dir=out, log=log, progress=progress)
    excluded = list(baselines.calibration_prompts) + list(profile.metadata.get("prompts") or [])
    prompts = default_evaluation_prompts(n_prompts, exclude=excluded)

    target_nfe = round(target * steps)
    log(f"choosing thresholds for about {target_nfe} of {steps} computed steps (calibration prompt only):")
    chosen = choose_settings(pipe, baselines, baselines_path, profile, DEMO_METHODS, steps, target_nfe, guidance,
                             retune=retune, log=log)
    values = {m: chosen[m]["value"] for m in DEMO_METHODS}
    log("  " + ", ".join(f"{m} {values[m]:g} (NFE {chosen[m]['nfe']:g} on calibration)" for m in DEMO_METHODS))
    log(f"running uncached + {', '.join(DEMO_METHODS)} on {len(prompts)} held-out prompt(s), seed {seed}")
    results = compare(pipe, prompts, [seed], list(DEMO_METHODS), num_inference_steps=steps,
                      guidance_scale=guidance, out_dir=out, profile=profile, baselines=baselines, values=values,
                      use_lpips=use_lpips, progress=progress, model=model, profile_path=profile_path,
                      baselines_path=baselines_path)
    results["demo"] = {"target_nfe": target_nfe, "tuning": {m: chosen[m] for m in DEMO_METHODS},
                       "seconds": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    files = write_report(out, results)
    results["files"] = {**results.get("files", {}), **{k: str(v) for k, v in files.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return results


def run(args) -> int:
    from ..baseline_calibration import default_baselines_path
    from ..compare import set_threads
    from ..demo_model import DEFAULT_MODEL_DIR, DEFAULT_PROFILE
    from ..loading import load_pipeline
    from ..errors import SenCacheError
    from ..profile import SensitivityProfile
    from ..report import text_table

    start = time.perf_counter()
    set_threads(args.threads)
    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    profile_path = Path(args.profile) if args.profile else DEFAULT_PROFILE
    pipe = load_pipeline(model)
    if not profile_path.is_file():
        raise SenCacheError(f"no sensitivity profile at {profile_path}: measure one with `sencache calibrate` "
                            f"(or pass --profile)")
    profile = SensitivityProfile.load(profile_path)
    results = run_demo(pipe, profile, args.out, n_prompts=args.prompts, steps=args.steps, seed=args.seed,
                       target=args.target, guidance=args.guidance, baselines_path=default_baselines_path(profile_path),
                       profile_path=profile_path, retune=args.retune, use_lpips=False if args.no_lpips else None,
                       model=str(model))
    out = Path(args.out).resolve()
    print()
    print(text_table(results, primary_only=True))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Files in {out}:")
    for name in ("side_by_side.mp4", "side_by_side.gif", "report.html", "results.json"):
        print(f"  {out / name}")
    return 0
