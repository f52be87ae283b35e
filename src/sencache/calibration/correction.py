"""Measuring the per-sample correction's normaliser ρ̄(t, g) on uncached runs of calibration prompts.

The numbers (ratios per interval, their geometric medians) are pure and live in
:mod:`sencache.core.correction`; this module runs the pipeline through the adapter's recorder.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from sencache.adapter.observers import CallEvent
from sencache.adapter.recorder import record_uncached
from sencache.core.correction import Track, correction_ratios, normaliser_table
from sencache.errors import SenCacheError
from sencache.runtime.generation import generate


def track_uncached(pipe, prompt: str, seed: int, num_inference_steps: int, guidance_scale: float = 5.0,
                   call_kwargs: dict | None = None) -> Track:
    """One uncached generation, keeping per step the deciding branch's latent, timestep and block-stack
    residual (batch row 0)."""
    track = Track()

    def keep(event: CallEvent) -> None:
        if not event.decider:
            return
        track.latents.append(event.latent.detach()[:1].clone())
        track.timesteps.append(float(event.timestep.reshape(-1)[0]))
        if event.residual is not None:
            track.residuals.append(event.residual.detach()[:1].float().clone())

    record_uncached(pipe, lambda: generate(pipe, prompt, int(seed), num_inference_steps=num_inference_steps,
                                           guidance_scale=guidance_scale, **(call_kwargs or {})), keep)
    if len(track.residuals) != len(track.latents):
        raise SenCacheError("the adapter reported fewer residuals than steps; cannot measure the correction normaliser")
    return track


def calibrate_correction(pipe, profile, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                         num_inference_steps: int | None = None, guidance_scale: float = 5.0, window: int = 4,
                         progress: bool = True, call_kwargs: dict | None = None) -> dict:
    """Measure ρ̄(t, g), the typical rms(Δ residual) / S of uncached intervals of g = 1..``window`` steps
    starting at t, and store it in ``profile.metadata["correction"]`` (what
    ``SenCacheConfig(correction=True)`` divides by). Each entry is the geometric median (exp of the
    median log) over the runs. Use calibration prompts (never evaluation prompts). Returns the dict.
    """
    T = int(num_inference_steps or profile.metadata.get("num_inference_steps") or 50)
    runs = [(p, int(s)) for p in prompts for s in seeds]
    if not runs:
        raise SenCacheError("calibrate_correction needs at least one prompt and seed")
    if not isinstance(window, int) or window < 1:
        raise SenCacheError(f"window must be an integer >= 1 (got {window!r})")
    per_step: list[list[float]] | None = None
    grid = None
    for p, s in tqdm(runs, desc="correction normaliser", disable=not progress, leave=False):
        track = track_uncached(pipe, p, s, T, guidance_scale, call_kwargs)
        ts, ratios = correction_ratios(profile, track, window)
        if per_step is None:
            per_step, grid = [[[] for _ in range(window)] for _ in ratios], ts
        for acc, vals in zip(per_step, ratios):
            for g, v in enumerate(vals):
                if v is not None:
                    acc[g].append(v)
    table, p10, p90 = normaliser_table(per_step, window)
    info = {
        "timesteps": [float(t) for t in grid],
        "ratio": [[float(v) for v in row] for row in table],
        "p10": [[float(v) if np.isfinite(v) else None for v in row] for row in p10],
        "p90": [[float(v) if np.isfinite(v) else None for v in row] for row in p90],
        "window": int(window),
        "num_inference_steps": T,
        "prompts": [p for p, _ in runs],
        "seeds": [s for _, s in runs],
        "units": "ratio[j][g-1] = rms(residual_(j+g) - residual_j) / S(j -> j+g) on uncached trajectories, "
                 "geometric median over runs",
    }
    profile.metadata["correction"] = info
    return info
