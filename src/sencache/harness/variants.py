"""SenCache variants at equal NFE: ε schedules, the per-sample correction, and how budget mode's simulated NFE
transfers to held-out prompts. Every variant gets its ε from budget mode for the same target."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sencache.core.budget import with_target
from sencache.core.rules.sencache import SenCacheConfig
from sencache.core.schedule import SCHEDULE_PRESETS, as_schedule
from sencache.core.trajectories import trajectories_of
from sencache.errors import SenCacheError
from sencache.harness.runner import cached_nfe, runs_against_reference
from sencache.runtime.prompts import check_disjoint


def measure_transfer(pipe, profile, targets: Sequence[float], prompts: Sequence[str], seeds: Sequence[int] = (0,),
                     guidance_scale: float = 5.0, call_kwargs: dict | None = None, **config_kwargs) -> list[dict]:
    """For every target NFE: the ε budget mode picks, its simulated NFE, and the NFE achieved on ``prompts``
    (which should be held out: not the profile's calibration prompts)."""

    if profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")
    T = trajectories_of(profile).num_steps
    rows = []
    for target in targets:
        config = with_target(SenCacheConfig(profile, **config_kwargs), float(target))
        nfes = cached_nfe(pipe, config, prompts, seeds, T, guidance_scale, call_kwargs)
        rows.append({"target_nfe": float(target), "eps": config.eps, "simulated_nfe": config.budget["simulated_nfe"],
                     "achieved_nfe": float(np.mean(nfes)), "achieved_per_run": nfes,
                     "max_abs_error": float(max(abs(n - target) for n in nfes))})
    return rows


# --------------------------------------------------------------------------------------------
# variants of the rule at equal NFE: ε schedules, the per-sample correction
# --------------------------------------------------------------------------------------------
def compare_variants(pipe, profile, prompts: Sequence[str], target_nfe: float, variants: dict,
                     seeds: Sequence[int] = (0,), baseline: str | None = None, guidance_scale: float = 5.0,
                     use_lpips: bool = False, progress: bool = True, num_inference_steps: int | None = None,
                     call_kwargs: dict | None = None, **config_kwargs) -> dict:
    """Variants of SenCache at equal (simulated) NFE, against the uncached reference on held-out ``prompts``.

    ``variants`` maps a name to SenCacheConfig keyword arguments (e.g. ``{"eps_schedule": "rising"}``,
    ``{"correction": True}``); every variant gets its ε from budget mode for ``target_nfe``. Returns per
    variant: eps, simulated and achieved NFE, PSNR / SSIM (/ LPIPS) means and per run; the winner by
    mean PSNR and its margin over ``baseline`` (default: the first variant). Budget mode does not
    simulate the correction, so check ``nfe_spread`` before reading a PSNR difference as a win.
    """

    if not variants:
        raise SenCacheError("no variants to compare")
    if profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")
    T = trajectories_of(profile).num_steps
    if num_inference_steps is not None and int(num_inference_steps) != T:
        raise SenCacheError(f"the profile's trajectories have {T} steps, so budget mode can only pick eps for {T}; "
                            f"recalibrate with --steps {num_inference_steps} or compare at {T} steps")
    baseline = baseline or next(iter(variants))
    if baseline not in variants:
        raise SenCacheError(f"baseline {baseline!r} is not one of the variants ({', '.join(variants)})")
    configs = {k: with_target(SenCacheConfig(profile, **{**config_kwargs, **v}), float(target_nfe))
               for k, v in variants.items()}
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    if not jobs:
        raise SenCacheError("no prompts or seeds to compare on")
    kwargs = dict(num_inference_steps=T, guidance_scale=guidance_scale, **(call_kwargs or {}))
    runs = runs_against_reference(pipe, jobs, configs, kwargs, use_lpips, desc="variants", progress=progress)
    rows = {}
    for name, cfg in configs.items():
        r = runs[name]
        rows[name] = {
            "settings": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in variants[name].items()},
            "eps_schedule": cfg.eps_schedule.to_dict() if cfg.eps_schedule is not None else None,
            "eps": cfg.eps, "simulated_nfe": cfg.budget["simulated_nfe"],
            "nfe": float(np.mean([x["nfe"] for x in r])),
            "psnr": float(np.mean([x["psnr"] for x in r])),
            "ssim": float(np.mean([x["ssim"] for x in r])),
            "lpips": float(np.mean([x["lpips"] for x in r])) if use_lpips else None,
            "runs": r,
        }
    winner = max(rows, key=lambda k: rows[k]["psnr"])
    return {"target_nfe": float(target_nfe), "num_steps": T, "prompts": list(prompts), "seeds": [int(s) for s in seeds],
            "variants": rows, "baseline": baseline, "winner": winner,
            "margin_db": rows[winner]["psnr"] - rows[baseline]["psnr"],
            "nfe_spread": max(r["nfe"] for r in rows.values()) - min(r["nfe"] for r in rows.values())}


def compare_schedules(pipe, profile, prompts: Sequence[str], target_nfe: float, seeds: Sequence[int] = (0,),
                      schedules=None, **kwargs) -> dict:
    """Fixed ε against ε schedules at equal (simulated) NFE, on held-out ``prompts``.

    ``schedules``: names of :data:`sencache.core.schedule.SCHEDULE_PRESETS` (the default: all of them),
    :class:`~sencache.core.schedule.EpsSchedule` objects, or a dict name -> either. "constant" (the
    paper's fixed ε) is always included and is the baseline of the margin. Other keyword arguments
    go to :func:`compare_variants`.
    """

    named = schedules if schedules is not None else dict(SCHEDULE_PRESETS)
    if not isinstance(named, dict):
        named = {(as_schedule(s).name or str(s)): s for s in named}
    named = {k: as_schedule(v) for k, v in named.items()}
    if "constant" not in named:
        named = {"constant": SCHEDULE_PRESETS["constant"], **named}
    variants = {k: {"eps_schedule": v} for k, v in named.items()}
    return compare_variants(pipe, profile, prompts, target_nfe, variants, seeds=seeds, baseline="constant", **kwargs)


def compare_correction(pipe, profile, prompts: Sequence[str], target_nfe: float, seeds: Sequence[int] = (0,),
                       **kwargs) -> dict:
    """SenCache with and without the per-sample correction, at the ε budget mode picks for ``target_nfe``
    (the profile needs the normaliser: :func:`sencache.calibration.correction.calibrate_correction`). Keyword arguments
    go to :func:`compare_variants`."""
    return compare_variants(pipe, profile, prompts, target_nfe, {"fixed": {}, "correction": {"correction": True}},
                            seeds=seeds, baseline="fixed", **kwargs)


def variants_table(result: dict, title: str = "SenCache variants") -> str:
    """A markdown table of :func:`compare_variants`'s result, with the verdict line."""
    lines = [f"{title} at target NFE {result['target_nfe']:g} of {result['num_steps']} "
             f"({len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), held out)", "",
             "| variant | eps scale | simulated NFE | achieved NFE | PSNR dB | SSIM | LPIPS |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        lp = f"{r['lpips']:.4f}" if r["lpips"] is not None else "–"
        lines.append(f"| {name} | {r['eps']:.4g} | {r['simulated_nfe']:.2f} | {r['nfe']:.2f} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {lp} |")
    w, b = result["winner"], result["baseline"]
    verdict = (f"winner: **{w}**, {result['margin_db']:+.2f} dB PSNR over {b}" if w != b
               else f"winner: **{w}** (the baseline); no variant beat it")
    lines += ["", verdict + f"; achieved NFE spread across variants {result['nfe_spread']:.2f}"
              + (" (not equal NFE: read with care)" if result["nfe_spread"] > 1.0 else "")]
    return "\n".join(lines) + "\n"


def schedules_table(result: dict) -> str:
    """The ε-schedule variants as markdown, against the constant ε."""
    return variants_table(result, "ε schedules (baseline: constant = the fixed ε)")
