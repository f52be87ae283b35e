"""Quality-target mode on the new draw: SenCacheConfig(profile, target_psnr=P) for P = 30, 35, 40 dB on every pair,
against the uncached clip (docs/target_psnr/): real PSNR per clip, the share at or above P − 2 dB, the mean NFE.
    .venv/bin/python scripts/target_psnr_check.py PROMPTS SEED [SEED ...]"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

import sencache
from sencache import SenCacheConfig, SensitivityProfile
from sencache.demo_model import load_pipeline
from sencache.harness.metrics import psnr
from sencache.runtime.generation import generate
from sencache.runtime.prompts import read_prompts

torch.set_num_threads(1)
TARGETS = (30.0, 35.0, 40.0)
root = Path(__file__).resolve().parents[1]
weights = root / "src" / "sencache" / "demo_model" / "weights"
prompts, seeds = read_prompts(sys.argv[1]), [int(s) for s in sys.argv[2:]]
pipe = load_pipeline(str(weights))
profile = SensitivityProfile.load(weights / "sencache_profile.json")
configs = {t: SenCacheConfig(profile, target_psnr=t) for t in TARGETS}
clips = []
for prompt in prompts:
    for seed in seeds:
        ref = generate(pipe, prompt, seed).frames
        for t, config in configs.items():
            session = sencache.enable(pipe, config)
            try:
                out = generate(pipe, prompt, seed).frames
                summary = session.summary()
            finally:
                sencache.disable(pipe)
            clips.append({"prompt": prompt, "seed": seed, "target": t, "nfe": summary["nfe"],
                          "predicted_psnr": summary["predicted_psnr_per_sample"][0], "psnr": psnr(ref, out)})
        print(prompt, seed, [(c["nfe"], round(c["psnr"], 1)) for c in clips[-3:]], flush=True)
lines = ["| target PSNR | λ | clips | at or above target − 2 dB | at or above target | mean / p10 / worst PSNR (dB) | "
         "mean NFE |", "|---|---|---|---|---|---|---|"]
for t in TARGETS:
    mine = [c for c in clips if c["target"] == t]
    p = np.array([c["psnr"] for c in mine])
    lines.append(f"| {t:g} | {configs[t].eps:.3g} | {len(mine)} | {np.mean(p >= t - 2):.0%} | {np.mean(p >= t):.0%} | "
                 f"{p.mean():.1f} / {np.percentile(p, 10):.1f} / {p.min():.1f} | "
                 f"{np.mean([c['nfe'] for c in mine]):.1f} |")
out = root / "docs" / "target_psnr"
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps({"prompts": prompts, "seeds": seeds, "clips": clips}, indent=1))
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
