"""Held-out check of an eps schedule: the 16 pairs of the README comparison (docs/eval_prompts.txt x seeds 0, 1),
each uncached and with SenCache in budget mode (target NFE 25) with a constant eps and with the "power2" schedule;
prints mean NFE and mean PSNR against the uncached clip.

    .venv/bin/python scripts/heldout_eps_schedule.py      (about 3 minutes on 2 cores)
"""

import numpy as np
import torch

import sencache
from sencache.demo_model import DEFAULT_PROFILE, load_pipeline
from sencache.metrics import psnr

CALL = dict(num_inference_steps=50, guidance_scale=5.0, max_sequence_length=32, output_type="np",
            height=32, width=32, num_frames=9)
SCHEDULES = {"constant": None, "power2": "power2"}


def generate_clip(pipe, prompt, seed, config):
    """(frames, NFE) of one generation; uncached when ``config`` is None."""
    cache = sencache.enable(pipe, config) if config is not None else None
    try:
        frames = pipe(prompt, generator=torch.Generator().manual_seed(seed), **CALL).frames[0]
        return frames, cache.trace.summary()["nfe"] if cache else CALL["num_inference_steps"]
    finally:
        if cache:
            sencache.disable(pipe)


def main():
    torch.set_num_threads(2)
    pipe = load_pipeline()
    profile = sencache.SensitivityProfile.load(DEFAULT_PROFILE)
    prompts = [line.strip() for line in open("docs/eval_prompts.txt") if line.strip()]
    results = {name: [] for name in SCHEDULES}
    for prompt in prompts:
        for seed in (0, 1):
            reference, _ = generate_clip(pipe, prompt, seed, None)
            for name, schedule in SCHEDULES.items():
                config = sencache.SenCacheConfig(profile, target_nfe=25, eps_schedule=schedule)
                frames, nfe = generate_clip(pipe, prompt, seed, config)
                results[name].append((nfe, psnr(reference, frames)))
    for name, rows in results.items():
        a = np.array(rows)
        print(f"{name:9s} pairs {len(a)}  mean NFE {a[:, 0].mean():.2f}  mean PSNR {a[:, 1].mean():.2f} dB")


if __name__ == "__main__":
    main()
