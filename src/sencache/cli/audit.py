"""`sencache audit`: does each cache's error estimate predict the error it makes? (and the ablations)

    sencache audit [--model DIR] [--prompts FILE] [--seeds 0 1] [--steps 50] [--out DIR]
                   [--ablations] [--schedules] [--target-nfe N]

Writes to OUT: audit.json, audit.md and scatter.png (predicted vs actual error per method); with
``--ablations`` ablations.json/.md/.png (n = max_reuse 1..7 at fixed ε, ε sweep at n = 3); with
``--schedules`` schedules.json/.md (ε schedules against fixed ε at equal NFE, by budget mode).
Evaluation prompts default to held-out captions, disjoint from every calibration prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sencache.calibration.baselines import default_baselines_path, ensure_baselines
from sencache.calibration.correction import calibrate_correction
from sencache.cli.options import (
    add_model_arguments,
    load_model,
    resolve_model,
    resolve_profile_path,
    seed_value,
    step_count,
)
from sencache.core.budget import recommended_eps, with_target
from sencache.core.profile import SensitivityProfile
from sencache.core.rules.sencache import SenCacheConfig
from sencache.demo_model.prompts import (
    default_calibration_prompts,
    default_evaluation_prompts,
)
from sencache.errors import SenCacheError
from sencache.harness.ablations import ablation_table, ablations
from sencache.harness.audit import audit, baseline_configs, stats_table
from sencache.harness.lpips_weights import lpips_ready
from sencache.harness.variants import (
    compare_correction,
    compare_schedules,
    schedules_table,
    variants_table,
)
from sencache.runtime.prompts import check_disjoint, read_prompts
from sencache.toolbox.numbers import jsonable

DEFAULT_METHODS = ("sencache", "magcache", "teacache")


def add_cli(subparsers) -> None:
    """Register ``sencache audit`` and its options on ``subparsers``."""
    p = subparsers.add_parser(
        "audit", help="predicted vs actual caching error per method; the paper's ablations; eps schedules",
        description="Run cached generations and, at every reused step, the real forward too (for measurement only); "
                    "report how well each method's own score predicts the real error (Pearson, Spearman, scatter "
                    "plot). --ablations adds the paper's n and eps ablations; --schedules compares eps schedules "
                    "with the fixed eps at equal NFE.")
    add_model_arguments(p)
    p.add_argument("--baselines", default=None, help="baselines JSON for MagCache/TeaCache (default: next to the "
                   "profile; calibrated there on first use)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: held-out captions)")
    p.add_argument("--num-prompts", type=int, default=4, help="how many held-out captions without --prompts")
    p.add_argument("--seeds", type=seed_value, nargs="+", default=[0])
    p.add_argument("--steps", type=step_count, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--eps", type=float, default=None, help="SenCache eps (default: the profile's recommended_eps, "
                   "else 0.1)")
    p.add_argument("--target-nfe", type=float, default=None, help="SenCache in budget mode instead of --eps")
    p.add_argument("--max-reuse", type=int, default=3)
    p.add_argument("--correction", action="store_true", help="audit SenCache with the per-sample correction on")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(DEFAULT_METHODS))
    p.add_argument("--out", default="sencache_audit", help="output folder (default sencache_audit/)")
    p.add_argument("--ablations", action="store_true", help="also run the n and eps ablations")
    p.add_argument("--n-values", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7])
    p.add_argument("--eps-values", type=float, nargs="+", default=None,
                   help="eps sweep at n = 3 (default: the fixed eps x 0.5 ... 2.8)")
    p.add_argument("--schedules", action="store_true",
                   help="also compare eps schedules with the fixed eps at equal NFE (--target-nfe, default T/2)")
    p.add_argument("--compare-correction", action="store_true",
                   help="also compare SenCache with and without the per-sample correction at equal eps "
                        "(--target-nfe, default T/2)")
    p.add_argument("--skip-audit", action="store_true", help="only the --ablations / --schedules / "
                   "--compare-correction parts")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS in the ablations and schedules")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def _check_args(args) -> None:
    if args.steps < 2:
        raise SenCacheError("--steps must be at least 2")
    if args.num_prompts < 1:
        raise SenCacheError("--num-prompts must be at least 1")
    if args.max_reuse < 0 or any(n < 0 for n in args.n_values):
        raise SenCacheError("--max-reuse and --n-values must be >= 0")
    if args.eps is not None and args.target_nfe is not None:
        raise SenCacheError("give --eps or --target-nfe, not both")
    if args.target_nfe is not None and not 1 <= args.target_nfe <= args.steps:
        raise SenCacheError(f"--target-nfe must be between 1 and --steps {args.steps}")
    if args.skip_audit and not (args.ablations or args.schedules or args.compare_correction):
        raise SenCacheError("--skip-audit leaves nothing to do: add --ablations, --schedules or --compare-correction")


def run_cli(args) -> int:
    """``sencache audit``."""
    _check_args(args)
    model = resolve_model(args.model)
    profile_path = resolve_profile_path(args.profile, model)
    if not profile_path.is_file():
        raise SenCacheError(f"no sensitivity profile at {profile_path}; measure one with "
                            f"`sencache calibrate --model {model} --out {profile_path}` or pass --profile")
    profile = SensitivityProfile.load(profile_path)
    calib = list(profile.metadata.get("prompts") or [])
    if args.prompts:
        prompts = read_prompts(args.prompts)
        if calib:
            check_disjoint(calib, prompts, "the sensitivity profile's calibration")
    else:
        prompts = default_evaluation_prompts(args.num_prompts, exclude=calib + default_calibration_prompts())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe, _ = load_model(args)
    profile.check_model(pipe.transformer)
    progress = not args.no_progress
    use_lpips = None if not args.no_lpips else False
    if args.correction or args.compare_correction:
        _ensure_correction(pipe, profile, args, out, progress)

    if not args.skip_audit:
        kwargs = dict(max_reuse=args.max_reuse, correction=args.correction, loop=False)  # audits the S rule
        if args.target_nfe is not None:
            config = with_target(SenCacheConfig(profile, **kwargs), args.target_nfe)
        else:
            eps = (args.eps if args.eps is not None
                   else recommended_eps(profile, default=0.1, num_inference_steps=args.steps))
            config = SenCacheConfig(profile, eps=eps, **kwargs)
        baselines = None
        if {"magcache", "teacache"} & set(args.methods):
            path = Path(args.baselines) if args.baselines else default_baselines_path(profile_path)
            baselines, _ = ensure_baselines(pipe, path, prompts, calibration_prompts=default_calibration_prompts(),
                                            num_inference_steps=args.steps,
                                            guidance_scale=args.guidance, fallback_dir=out,
                                            log=lambda m: print(m, file=sys.stderr), progress=progress)
        configs = {}
        if baselines is not None:
            configs = {k: v for k, v in baseline_configs(baselines, args.steps).items() if k in args.methods}
        result = audit(pipe, prompts, args.seeds, config if "sencache" in args.methods else None, configs=configs,
                       num_inference_steps=args.steps, guidance_scale=args.guidance, out_dir=out, progress=progress)
        print(stats_table(result))
        print(f"wrote {', '.join(result['files'].values())}")

    if args.ablations:
        eps = args.eps
        result = ablations(pipe, profile, prompts, args.seeds, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, eps=eps, n_values=args.n_values, eps_values=args.eps_values,
                           use_lpips=use_lpips, out_dir=out, progress=progress)
        print(ablation_table(result))
        print(f"wrote {', '.join(result['files'].values())}")

    target = args.target_nfe if args.target_nfe is not None else args.steps / 2
    lp = use_lpips if use_lpips is not None else lpips_ready()
    common = dict(seeds=args.seeds, guidance_scale=args.guidance, use_lpips=lp, progress=progress,
                  max_reuse=args.max_reuse, num_inference_steps=args.steps)
    if args.schedules:
        result = compare_schedules(pipe, profile, prompts, target, **common)
        _write(out, "schedules", result, schedules_table(result))
    if args.compare_correction:
        result = compare_correction(pipe, profile, prompts, target, **common)
        _write(out, "correction", result, variants_table(result, "Per-sample correction (same eps)"))
    return 0


def _write(out: Path, stem: str, result: dict, table: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
    (out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}")


def _ensure_correction(pipe, profile, args, out: Path, progress: bool) -> None:
    """The correction needs the profile's normaliser: measure it on the profile's own calibration prompts
    when missing, and keep a copy of the extended profile in OUT."""
    if isinstance(profile.metadata.get("correction"), dict):
        return

    prompts = list(dict.fromkeys(profile.metadata.get("prompts") or []))[:4]
    seeds = (profile.metadata.get("seeds") or [0])[:1]
    if not prompts:
        raise SenCacheError("the profile lists no calibration prompts to measure the correction normaliser on; "
                            "recalibrate it with `sencache calibrate --prompts FILE`")
    print(f"measuring the correction normaliser on {len(prompts)} calibration prompt(s)", file=sys.stderr)
    calibrate_correction(pipe, profile, prompts, seeds, args.steps, args.guidance, progress=progress)
    path = profile.save(out / "profile_with_correction.json")
    print(f"wrote {path}", file=sys.stderr)
