"""`sencache compare`: methods side by side against the uncached reference (:func:`sencache.harness.compare.compare`).

Under ``torchrun --nproc_per_node=K`` the prompt x seed jobs are sharded over the ranks; baseline calibration
and threshold tuning (``--nfe-targets``) run once on rank 0 and are shared.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from sencache.calibration.baselines import default_baselines_path, ensure_baselines
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
from sencache.demo_model.prompts import default_calibration_prompts
from sencache.errors import SenCacheError
from sencache.harness.compare import compare
from sencache.harness.equal_nfe import equal_nfe, equal_nfe_table
from sencache.harness.tuning import tune_values
from sencache.methods import METHODS, MethodContext, get_method
from sencache.report.page import write_report
from sencache.report.tables import text_table
from sencache.runtime import distributed as dist
from sencache.runtime.prompts import check_disjoint, read_prompts


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


PARTIAL = "partial"  # OUT/partial/: finished jobs of a run that has not ended


def add_cli(subparsers) -> None:
    """Register ``sencache compare`` and its options on ``subparsers``."""
    p = subparsers.add_parser(
        "compare", help="compare caching methods against the uncached reference (NFE, time, PSNR, SSIM, LPIPS)",
        description="Run every method on every prompt x seed, next to the uncached reference; write results.json, "
                    "results.md and pareto.png (and, with --report, side_by_side.mp4/.gif and report.html).")
    add_model_arguments(p)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--seeds", type=seed_value, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["sencache", "magcache", "magcache-final", "teacache", "fixed"],
                   metavar="METHOD", help=f"from: {', '.join(METHODS)}")
    p.add_argument("--sweep", action="store_true", help="run every method over its list of thresholds")
    p.add_argument("--set", action="append", default=[], metavar="METHOD=V[,V...]",
                   help="pin a method's threshold(s), e.g. --set magcache=0.1,0.2 (repeatable)")
    p.add_argument("--nfe-targets", type=float, nargs="+", default=None, metavar="NFE",
                   help="instead of fixed thresholds: for each method, find the thresholds that give these NFEs on "
                        "the first calibration prompt, then evaluate those")
    p.add_argument("--steps", type=step_count, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--baselines", default=None, help="baselines JSON (default: baselines.json next to the profile; "
                   "calibrated there on first use)")
    p.add_argument("--out", default="sencache_compare", help="output folder (default sencache_compare/)")
    p.add_argument("--report", action="store_true", help="also write side_by_side.mp4/.gif and report.html")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: every finished job is kept in OUT/partial/ as it completes "
                        "(same arguments required; --nfe-targets tunes again, to the same thresholds); the folder "
                        "is deleted once the results are written")
    add_threads_argument(p)
    p.set_defaults(func=_run_cli)


def _needs(methods: Sequence[str]) -> set[str]:
    needs = set()
    for m in methods:
        needs.update(get_method(m).needs)
    return needs


def load_profile_if_needed(path, methods: Sequence[str]):
    """The profile at ``path``, or None when it is missing and no method needs one."""
    path = Path(path)
    if path.is_file():
        return SensitivityProfile.load(path)
    if "profile" in _needs(methods):
        raise SenCacheError(f"no sensitivity profile at {path}: run `sencache calibrate` first or pass --profile")
    return None


def _run_cli(args) -> int:
    for m in args.methods:
        get_method(m)  # unknown names fail before anything loads
    set_threads(args.threads)
    dist.init_if_needed()  # under torchrun: jobs are sharded over the ranks, rank 0 writes the results
    if args.steps < 2:
        raise SenCacheError("--steps must be at least 2")
    prompts = read_prompts(args.prompts)
    pipe, model = load_model(args)
    profile_path = resolve_profile_path(args.profile, model)
    profile = load_profile_if_needed(profile_path, args.methods)
    baselines = baselines_path = None
    if "baselines" in _needs(args.methods) or (args.nfe_targets and args.baselines):
        baselines_path = Path(args.baselines) if args.baselines else default_baselines_path(profile_path)
        want = baselines_path
        baselines, baselines_path = dist.run_on_main(lambda: ensure_baselines(  # calibrated (and saved) once, by rank 0
            pipe, want, prompts, calibration_prompts=default_calibration_prompts(), num_inference_steps=args.steps,
            guidance_scale=args.guidance, fallback_dir=args.out))
    start = time.perf_counter()
    values, tuning = parse_set(args.set), None
    if args.nfe_targets:
        # tuned on the first calibration prompt of the baselines, or (no method needs them) on the prompt they
        # would be calibrated on: never on an evaluation prompt
        tune_prompts = baselines.calibration_prompts[:1] if baselines is not None else default_calibration_prompts()[:1]
        tune_seeds = baselines.calibration_seeds[:1] if baselines is not None else [0]
        check_disjoint(tune_prompts, prompts, "threshold tuning (--nfe-targets)")
        ctx = MethodContext(num_inference_steps=args.steps, profile=profile, baselines=baselines)
        tuned, tuning = dist.run_on_main(lambda: tune_values(  # rank 0 tunes; every rank evaluates the same values
            pipe, args.methods, args.nfe_targets, tune_prompts, tune_seeds, ctx, args.guidance))
        values = {**tuned, **values}
    results = compare(pipe, prompts, args.seeds, args.methods, sweep=args.sweep, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, out_dir=args.out, profile=profile, baselines=baselines,
                      values=values, use_lpips=False if args.no_lpips else None, model=str(model),
                      profile_path=profile_path, baselines_path=baselines_path, keep_going=True,
                      checkpoint=Path(args.out) / PARTIAL, resume=args.resume)
    if results is None:  # another rank: rank 0 writes and reports
        return 0
    if not results["failures"]:  # every job is in the results: the finished ones are done with
        shutil.rmtree(Path(args.out) / PARTIAL, ignore_errors=True)
    if tuning:
        results["tuning"] = tuning
        results["equal_nfe"] = {"targets": list(args.nfe_targets), "methods": equal_nfe(results, args.nfe_targets)}
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
        (Path(args.out) / "equal_nfe.md").write_text(equal_nfe_table(results, args.nfe_targets))
    if args.report:
        write_report(args.out, results)

    print(text_table(results))
    if tuning:
        print("\n" + equal_nfe_table(results, args.nfe_targets))
    print(f"\n{len(results['jobs'])} job(s) in {time.perf_counter() - start:.1f} s; "
          f"results in {Path(args.out).resolve()}")
    for f in results["failures"]:
        print(f"failed: job {f['job']} {f['prompt']!r} seed {f['seed']} on rank {f['rank']}: {f['error']}",
              file=sys.stderr)
    if results["failures"]:
        print(f"the finished jobs are kept in {Path(args.out) / PARTIAL}: the same command with --resume runs only "
              f"the failed ones", file=sys.stderr)
    return 1 if results["failures"] else 0
