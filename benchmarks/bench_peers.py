"""Peers side by side: SenCache and the other caches on the same prompts and seeds, one table, one run.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_peers.py

Runs :func:`sencache.harness.compare.compare` on the demo model (the shipped one when present) with SenCache,
MagCache, TeaCache (ours, calibrated here on held-out calibration prompts unless the shipped
``baselines.json`` matches the step count), diffusers' FirstBlockCache, SeaCache and TaylorSeer, and
cache-dit's DBCache (when ``cache_dit`` imports; ``run_all.sh`` installs ``cache-dit==1.5.3`` into the venv
for this benchmark only, and the output says why when it is missing or fails). Every method runs at its
registry default setting (``--sweep`` for each method's threshold sweep). NFE is counted by
:class:`sencache.methods.counter.StepCounter` (independent of every cache), PSNR/SSIM/LPIPS are against the
uncached frames of the same prompt and seed, wall time is the pipeline call. ``--repeats N`` runs the whole
comparison N times and reports the median wall time (fidelity and NFE are deterministic and must agree).
An uncached re-run is in the table as the timing noise floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

NAME = "peers"
DEFAULT_METHODS = ["none", "sencache", "magcache", "teacache", "fbcache", "seacache", "diffusers-seacache",
                   "taylorseer", "dbcache"]
INSTALL_LOG = common.RESULTS_DIR / "cache_dit_install.log"


def cache_dit_status() -> dict:
    """Whether cache-dit imports here, its version, and why not."""
    try:
        from sencache.methods.optional import import_cache_dit

        mod = import_cache_dit()
        return {"available": True, "version": getattr(mod, "__version__", None), "reason": None}
    except Exception as exc:  # ImportError, or anything its import raises
        reason = f"cannot import cache_dit: {type(exc).__name__}: {exc}"
        if INSTALL_LOG.is_file():
            tail = [ln for ln in INSTALL_LOG.read_text(errors="replace").splitlines() if ln.strip()][-3:]
            reason += " | pip install cache-dit==1.5.3 said: " + " / ".join(tail)
        else:
            reason += " | not installed (bash benchmarks/run_all.sh installs it: pip install cache-dit==1.5.3)"
        return {"available": False, "version": None, "reason": reason}


def preflight(pipe, method: str, ctx, steps: int) -> str | None:
    """Run ``method`` once for 2 steps; return why it fails on this machine, or None."""
    from sencache.adapter.hooks import quiet_sencache
    from sencache.methods import get_method
    from sencache.runtime.generation import generate

    try:
        with get_method(method).apply(pipe, None, ctx), quiet_sencache():
            generate(pipe, common.PROMPT, 0, num_inference_steps=min(steps, 3))
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return None


def load_baselines(pipe, info, profile_path, steps, guidance, with_diffusers_magcache: bool):
    from sencache.calibration.baselines import Baselines, calibrate_baselines, default_baselines_path
    from sencache.demo_model import DEFAULT_PROFILE

    if info["source"] == "shipped" or profile_path:  # baselines.json sits next to the model's own profile
        path = default_baselines_path(profile_path or DEFAULT_PROFILE)
        if path.is_file():
            b = Baselines.load(path)
            b.check_model(pipe.transformer)
            if b.num_inference_steps == steps:
                return b, {"source": "file", "path": str(path)}
    start = time.perf_counter()
    common.log(f"[peers] calibrating MagCache/TeaCache baselines at {steps} steps (held-out prompts)")
    b = calibrate_baselines(pipe, common.calibration_prompts(2), (0,), steps, guidance,
                            diffusers_magcache=with_diffusers_magcache, progress=False)
    return b, {"source": "calibrated", "path": None, "prompts": b.calibration_prompts,
               "seconds": round(time.perf_counter() - start, 2)}


def rows_of(results: dict) -> list[dict]:
    rows = []
    for name in results["method_order"]:
        m = results["methods"][name]
        if not m["available"]:
            rows.append({"method": name, "family": m["family"], "setting": None, "available": False,
                         "skipped": m["skipped"]})
            continue
        for s in m["settings"]:
            rows.append({"method": name, "family": m["family"], "setting": s["key"].split("@", 1)[-1],
                         "available": True, "skipped": None, "nfe": s["nfe"], "wall_s": s["wall_s"],
                         "speedup": s["speedup"], "psnr": s["psnr"], "psnr_capped": s["psnr_capped"],
                         "ssim": s["ssim"], "lpips": s["lpips"]})
    return rows


def table(rows: list[dict], ref_wall: float, steps: int) -> str:
    out = [["uncached (reference)", "–", steps, common.fmt(ref_wall, ".3f"), "1.00×", "∞", "1.000", "0.000"]]
    for r in rows:
        if not r["available"]:
            out.append([r["method"], "–", "–", "–", "–", r["skipped"], "", ""])
            continue
        label = "uncached (re-run)" if r["method"] == "none" else r["method"]
        psnr = ("≥ " if r["psnr_capped"] else "") + common.fmt(r["psnr"], ".2f")
        out.append([label, r["setting"] if r["method"] != "none" else "–", common.fmt(r["nfe"], "g"),
                    common.fmt(r["wall_s"], ".3f"), common.fmt(r["speedup"], ".2f") + "×", psnr,
                    common.fmt(r["ssim"], ".3f"), common.fmt(r["lpips"], ".3f")])
    return common.markdown_table(["method", "setting", "NFE", "wall (s)", "speed-up", "PSNR (dB)", "SSIM",
                                  "LPIPS"], out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--size", default="demo", choices=list(common.SIZES), help="model (default demo)")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo model)")
    parser.add_argument("--profile", default=None, help="sensitivity profile (default: the shipped one, else "
                                                         "calibrated here)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--prompts", type=int, default=2, help="held-out evaluation prompts (default 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=2, help="whole comparisons; median wall time (default 2)")
    parser.add_argument("--sweep", action="store_true", help="every method over its threshold sweep")
    parser.add_argument("--no-lpips", action="store_true")
    common.add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    overrides = {}
    if args.quick:
        args.size, args.steps, args.prompts, args.repeats, args.no_lpips = "tiny", 5, 1, 1, True
        overrides = {"num_layers": 2}  # FirstBlockCache and DBCache need two blocks
    common.set_threads(args.threads)
    started = time.perf_counter()

    from sencache.demo_model.prompts import default_evaluation_prompts
    from sencache.harness.compare import compare
    from sencache.methods import MethodContext, get_method

    for m in args.methods:
        get_method(m)
    pipe, info = common.load_model(args.size, args.model, **overrides)
    profile, pinfo = common.load_profile(pipe, info, args.steps, args.profile,
                                         num_samples=1 if args.quick else 2, log=common.log)
    needs = {n for m in args.methods for n in get_method(m).needs}
    baselines, binfo = (None, None)
    if "baselines" in needs:
        baselines, binfo = load_baselines(pipe, info, args.profile, args.steps, args.guidance,
                                          "diffusers-magcache" in args.methods)
    exclude = list(profile.metadata.get("prompts") or []) + list(baselines.calibration_prompts if baselines else [])
    prompts = default_evaluation_prompts(args.prompts, exclude=exclude)
    ctx = MethodContext(num_inference_steps=args.steps, profile=profile, baselines=baselines)

    notes, failed = [], {}
    cd = cache_dit_status()
    methods = list(args.methods)
    if "dbcache" in methods:
        if not cd["available"]:
            notes.append(f"dbcache skipped: {cd['reason']}")
        else:
            why = preflight(pipe, "dbcache", ctx, args.steps)
            if why is not None:
                failed["dbcache"] = f"fails on this machine: {why}"
                notes.append(f"dbcache (cache-dit {cd['version']}) {failed['dbcache']}")
                methods.remove("dbcache")

    runs = []
    for rep in range(max(1, args.repeats)):
        common.log(f"[peers] comparison {rep + 1}/{args.repeats}: {len(prompts)} prompt(s) x {len(args.seeds)} "
                   f"seed(s), {args.steps} steps")
        runs.append(compare(pipe, prompts, args.seeds, methods, sweep=args.sweep, num_inference_steps=args.steps,
                            guidance_scale=args.guidance, profile=profile, baselines=baselines,
                            use_lpips=False if args.no_lpips else None, progress=False, model=info.get("path")))
    results = runs[0]
    rows = rows_of(results)
    # median wall time over the repeats; NFE and fidelity must agree between repeats
    all_rows = [rows_of(r) for r in runs]
    ref_walls = [r["reference"]["wall_s"] for r in runs]
    ref_wall = common.median(ref_walls)
    consistent = True
    for i, row in enumerate(rows):
        if not row["available"]:
            continue
        walls = [rs[i]["wall_s"] for rs in all_rows]
        consistent &= all(rs[i]["nfe"] == row["nfe"] and rs[i]["psnr"] == row["psnr"] for rs in all_rows)
        row["wall_s_all"] = walls
        row["wall_s"] = common.median(walls)
        row["speedup"] = ref_wall / row["wall_s"] if row["wall_s"] else None
    for name, reason in failed.items():
        rows.append({"method": name, "family": get_method(name).family, "setting": None, "available": False,
                     "skipped": reason})
    notes += list(results.get("notes") or [])
    if not consistent:
        notes.append("NFE or PSNR differed between repeats (a non-deterministic cache?)")
    notes.append("wall time on a shared 2-core CPU: compare the uncached re-run's speed-up (noise floor) first")
    md = table(rows, ref_wall, args.steps)
    result = {
        **common.envelope(NAME, "bench_peers.py", argv, args.quick, started),
        "model": info,
        "profile": pinfo,
        "baselines": binfo,
        "cache_dit": cd,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "prompts": prompts,
        "seeds": args.seeds,
        "repeats": len(runs),
        "reference_wall_s": ref_wall,
        "reference_wall_s_all": ref_walls,
        "rows": rows,
        "repeats_consistent": bool(consistent),
        "compare": results,
        "table_md": md,
        "notes": notes,
    }
    return common.finish(NAME, "Peers side by side", result, md, args, started, notes)


if __name__ == "__main__":
    main()
