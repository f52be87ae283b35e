"""Held-out check of an eps schedule: the 16 pairs of the README comparison (docs/eval_prompts.txt x seeds 0, 1),
each uncached and with SenCache in budget mode (target NFE 25) with a constant eps and with the "power2" schedule;
prints mean NFE and mean PSNR against the uncached clip.

    .venv/bin/python scripts/heldout_eps_schedule.py      (about 3 minutes on 2 cores)
"""

import numpy as np
import torch

import sencache
from sencache.demo_model import DEFAULT_PROFILE, load_pipeline
from sencache.harness.metrics import psnr
from sencache.runtime.generation import generate

SCHEDULES = {"constant": "constant", "power2": "power2"}


def cached_clip(pipe, prompt, seed, config):
    """(frames, NFE) of one SenCache generation at the demo settings (50 steps, CFG 5)."""
    cache = sencache.enable(pipe, config)
    try:
        return generate(pipe, prompt, seed).frames, cache.trace.summary()["nfe"]
    finally:
        sencache.disable(pipe)


def main():
    torch.set_num_threads(2)
    pipe = load_pipeline()
    profile = sencache.SensitivityProfile.load(DEFAULT_PROFILE)
    prompts = [line.strip() for line in open("docs/eval_prompts.txt") if line.strip()]
    results = {name: [] for name in SCHEDULES}
    for prompt in prompts:
        for seed in (0, 1):
            reference = generate(pipe, prompt, seed).frames
            for name, schedule in SCHEDULES.items():
                config = sencache.budget.with_target(sencache.SenCacheConfig(profile, eps_schedule=schedule),
                                                     target_nfe=25)
                frames, nfe = cached_clip(pipe, prompt, seed, config)
                results[name].append((nfe, psnr(reference, frames)))
    for name, rows in results.items():
        a = np.array(rows)
        print(f"{name:9s} pairs {len(a)}  mean NFE {a[:, 0].mean():.2f}  mean PSNR {a[:, 1].mean():.2f} dB")


if __name__ == "__main__":
    main()
