"""The predicted output change S, written once: the online rule, the offline replay and the correction use it.
(And S₁, the predicted error of a linear forecast instead of holding the cache: :func:`forecast_change`.)

    S = ‖J_x‖(t_ref) · rms(x − x_ref) + ‖J_t‖(t_ref) · |t − t_ref|

A first-order bound on how far the denoiser's output has moved since the reference point (the last
refresh), from the profile's sensitivities at the reference timestep. Works elementwise on floats,
numpy arrays and torch tensors alike. Distances are RMS over every element of a sample
(:func:`rms_per_sample`), so ε means the same at any resolution.
"""

from __future__ import annotations

import numpy as np
import torch


def predicted_change(jx, dx, jt, dt):
    """S from the sensitivities (``jx`` = ‖J_x‖, ``jt`` = ‖J_t‖, RMS units) and the input changes
    (``dx`` = rms(x − x_ref), ``dt`` = |t − t_ref| in the transformer's timestep units)."""
    return jx * dx + jt * dt


def forecast_change(jtt, dt_ref, dt_prev):
    """S₁, the predicted error of extrapolating linearly (in t) from the last two refreshes at t_ref and t_prev:
    ½·‖d²f/dt²‖·|t − t_ref|·|t − t_prev|, exact for an output that is quadratic in t along the trajectory.
    ``jtt`` is the curvature of the output along the sampling path (RMS units per timestep unit squared)."""
    return 0.5 * jtt * dt_ref * dt_prev


def guarded_forecast_change(s1, s, guard):
    """S₁ bounded below by S / ``guard``: a sample may forecast only while its own predicted change since the
    refresh, S, stays under ``guard``·ε. S₁ alone depends on the refresh times and one profile curve, the
    same for every sample; the guard gives the forecast's reach a per-sample input (None: no guard)."""
    if guard is None:
        return s1
    bound = s / guard
    return torch.maximum(s1, bound) if isinstance(s1, torch.Tensor) else np.maximum(s1, bound)


def rms_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over every dimension but the first: (B, ...) -> (B,), in float32."""
    flat = x.detach().reshape(x.shape[0], -1).float()
    return flat.pow(2).mean(dim=1).sqrt()
