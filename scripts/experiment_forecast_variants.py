"""Experiment behind docs/forecasting.md's "What else was tried" (issue #23): variants of the default rule at the ε
budget mode picks for each target NFE, on the profile's first 4 calibration prompts with seed 11 (never an
evaluation pair). PSNR / LPIPS against the uncached output.

    .venv/bin/python scripts/experiment_forecast_variants.py [TARGET ...]     (about 12 minutes on 2 cores)

  n2 / n4         max_reuse 2 / 4 instead of 3 (SeaCache allows at most 2 cached steps in a row)
  jtt x2 / x4     the curvature curve scaled up, so a sample forecasts only where k·S1 < S (a more cautious
                  forecast); budget mode sees the same scaled curve, so ε is re-solved for it
  guard 1 / 2 / 4 forecast_guard: a sample forecasts only while its own S ≤ guard·ε (a per-sample bound on
                  the forecast's reach; 1 never forecasts)

Writes docs/forecast_variants.json.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

import sencache
from sencache.core.budget import with_target
from sencache.demo_model import DEFAULT_PROFILE, load_pipeline
from sencache.harness.runner import runs_against_reference

OUT = "docs/forecast_variants.json"


def profile_with_curvature_scaled(k: float = 1.0) -> sencache.SensitivityProfile:
    profile = sencache.SensitivityProfile.load(DEFAULT_PROFILE)
    profile.curves["jtt"] = [k * v for v in profile.curves["jtt"]]
    return profile


def main() -> None:
    torch.set_num_threads(2)
    pipe = load_pipeline()
    base = profile_with_curvature_scaled()
    prompts = base.metadata["prompts"][:4]
    variants = {"default": (base, {}), "n2": (base, {"max_reuse": 2}), "n4": (base, {"max_reuse": 4}),
                "jtt x2": (profile_with_curvature_scaled(2.0), {}),
                "jtt x4": (profile_with_curvature_scaled(4.0), {}),
                "guard 1": (base, {"forecast_guard": 1.0}), "guard 2": (base, {"forecast_guard": 2.0}),
                "guard 4": (base, {"forecast_guard": 4.0})}
    targets = [float(a) for a in sys.argv[1:]] or [15.0, 20.0, 25.0, 30.0, 35.0]
    out = {}
    for target in targets:
        configs = {k: with_target(sencache.SenCacheConfig(p, **v), target) for k, (p, v) in variants.items()}
        runs = runs_against_reference(pipe, [(p, 11) for p in prompts], configs,
                                      dict(num_inference_steps=50, guidance_scale=5.0), True, desc=f"target {target}")
        for name, r in runs.items():
            row = dict(eps=configs[name].eps, nfe=float(np.mean([x["nfe"] for x in r])),
                       psnr=float(np.mean([x["psnr"] for x in r])), lpips=float(np.mean([x["lpips"] for x in r])))
            out[f"{target:g} {name}"] = row
            print(f"{target:g} {name:8s} eps {row['eps']:.4g} NFE {row['nfe']:.2f} PSNR {row['psnr']:.2f} "
                  f"LPIPS {row['lpips']:.4f}", flush=True)
        with open(OUT, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
