"""The noise level σ in [0, 1] of the current step, from the pipeline's scheduler.

Flow-matching schedulers (Wan, LTX-Video, FLUX, HunyuanVideo) keep ``sigmas`` per step; Wan also passes
``sigma`` in its cache context, which wins. Variance-preserving schedulers (CogVideoX's DDIM and DPM) keep
``alphas_cumprod`` per training timestep, mapped to the flow σ of the same noise-to-signal ratio
(:func:`sencache.core.rules.sea_filter.flow_sigma`). Without a scheduler: timestep / 1000.
"""

from __future__ import annotations

import math

import torch

from sencache.core.rules.sea_filter import flow_sigma

__all__ = ["noise_level"]


def noise_level(scheduler, context_sigma, step: int, timestep: float) -> float:
    """σ of ``step`` (at ``timestep``, in scheduler units)."""
    if context_sigma is not None:
        return float(context_sigma)
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.numel() > step:
        return float(sigmas[step])
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(alphas, torch.Tensor) and alphas.numel() > 0 and math.isfinite(timestep):
        index = min(max(int(round(timestep)), 0), alphas.numel() - 1)
        return flow_sigma(float(alphas[index]))
    train = float(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 0) or 1000)
    return min(1.0, max(0.0, timestep / train))
