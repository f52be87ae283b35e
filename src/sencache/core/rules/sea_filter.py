"""The SEA filter of SeaCache (Spectral-Evolution-Aware, arXiv 2602.18993), written from its description.

SeaCache judges how much a step changed by comparing *filtered* signals: a noise-level-aware Wiener filter over
the (frames, height, width) grid keeps the part of the spectrum that the clean video already carries at noise
level σ and damps the part that is still noise. With a clean-signal power prior P(f) = 1 / |f|^p per axis
(p = 3 for video) and a rectified-flow mix x_σ = (1 − σ)·x₀ + σ·ε, the per-axis gain is

    g(f) = (1 − σ)·P(f) / ((1 − σ)²·P(f) + σ²)

the three axes multiply, and the combined response is divided by its mean (so distances compare across steps).
This matches diffusers 0.42.1's ``_apply_sea_filter`` numerically (float32 FFT, the same 1e-6 / 1e-16 guards),
which the adapter's ``seacache`` method relies on to make the same decisions as diffusers' own SeaCache.

Only the ratio σ / (1 − σ) shapes the normalised filter, so a variance-preserving sampler (DDIM, DPM: x_t =
√ᾱ·x₀ + √(1 − ᾱ)·ε) uses the flow σ with the same ratio: σ = √(1 − ᾱ) / (√ᾱ + √(1 − ᾱ)) (:func:`flow_sigma`).
"""

from __future__ import annotations

import math

import torch

from sencache.errors import SenCacheError

__all__ = ["DEFAULT_POWER_EXP", "flow_sigma", "sea_filter"]

DEFAULT_POWER_EXP = 3.0  # SeaCache's clean-power exponent for video features
_SIGMA_GUARD = 1e-6
_TINY = 1e-16


def flow_sigma(alpha_cumprod: float) -> float:
    """The rectified-flow σ whose noise-to-signal ratio equals that of x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε."""
    a = max(0.0, min(1.0, float(alpha_cumprod)))
    signal, noise = math.sqrt(a), math.sqrt(1.0 - a)
    return noise / (signal + noise) if signal + noise > 0 else 1.0


def _axis_gain(n: int, sigma: float, power_exp: float, device) -> torch.Tensor:
    freq = torch.fft.fftfreq(n, device=device, dtype=torch.float32)
    clean = 1.0 / (freq.abs().pow(power_exp) + _TINY)
    signal, noise = 1.0 - sigma, sigma
    return signal * clean / (signal ** 2 * clean + noise ** 2 + _TINY)


def sea_filter(grid: torch.Tensor, sigma: float, power_exp: float = DEFAULT_POWER_EXP) -> torch.Tensor:
    """Filter ``grid`` (B, F, H, W, C) over its frames, height and width at noise level ``sigma`` in [0, 1].

    Returns the filtered grid in the input's dtype (computed in float32), same shape.
    """
    if grid.ndim != 5:
        raise SenCacheError(f"sea_filter needs a (B, F, H, W, C) grid, got shape {tuple(grid.shape)}")
    if not math.isfinite(float(sigma)):
        raise SenCacheError(f"sea_filter needs a finite noise level sigma, got {sigma!r}")
    dtype = grid.dtype
    x = grid.contiguous().float()
    sigma = max(_SIGMA_GUARD, min(1.0 - _SIGMA_GUARD, float(sigma)))
    dims = (1, 2, 3)
    gain = None
    for axis in dims:
        g = _axis_gain(x.shape[axis], sigma, power_exp, x.device)
        shape = [1] * 4
        shape[axis - 1] = g.shape[0]
        g = g.reshape(shape)
        gain = g if gain is None else gain * g
    mean = gain.mean()
    if torch.isfinite(mean) and mean > 0:
        gain = gain / mean
    gain = gain.unsqueeze(0)  # (1, F, H, W, 1) over the batch and channels
    return torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * gain, dim=dims).real.to(dtype)
