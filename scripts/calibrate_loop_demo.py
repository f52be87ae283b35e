"""Add the closed-loop calibration (clip-error gain, replay tables, combine factor) to the shipped demo profiles.

    .venv/bin/python scripts/calibrate_loop_demo.py [weights weights_cogvideox weights_ltx]

Uses the first 3 calibration prompts of each system (seed 0), the gain at every 3rd step; writes the profile back
with budget mode's tolerance for NFE 25 as the loop's recommended_eps. About 5 minutes per system on one core.
"""

import sys
from pathlib import Path

import torch

from sencache.calibration.loop import calibrate_loop
from sencache.core.budget import recommend
from sencache.core.profile import SensitivityProfile
from sencache.demo_model import load_pipeline

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1] / "src" / "sencache" / "demo_model"
for name in sys.argv[1:] or ["weights", "weights_cogvideox", "weights_ltx"]:
    folder = ROOT / name
    pipe = load_pipeline(str(folder))
    path = folder / "sencache_profile.json"
    profile = SensitivityProfile.load(path)
    prompts = (folder / "calibration_prompts.txt").read_text().splitlines()[:3]
    info = calibrate_loop(pipe, profile, prompts, seeds=(0,), gain_every=3, progress=False)
    budget = recommend(profile, 25, loop=True)
    profile.save(path)
    print(f"{name}: combine {info['combine']:.3g}, {info['seconds']:.0f} s, recommended eps {budget['eps']:.3g} "
          f"(replayed NFE {budget['simulated_nfe']:g})", flush=True)
