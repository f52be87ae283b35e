"""The per-sample correction's normaliser ρ̄(t, g): how much the block-stack residual really changes per unit of S.

S predicts the RMS change of the model *output*; the rule sees the block-stack *residual*. ρ̄(t, g) is the
typical rms(Δ residual) / S of uncached intervals of g steps starting at timestep t, measured on calibration
trajectories (:func:`sencache.calibration.correction.calibrate_correction`) and stored in
``profile.metadata["correction"]``. Here: reading it back, interpolating it, and the pure arithmetic of
measuring it (ratios on one recorded trajectory, geometric medians over many).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sencache.core.change import predicted_change, rms_per_sample
from sencache.core.profile import SensitivityProfile, interpolate
from sencache.errors import SenCacheError


def correction_normaliser(profile: SensitivityProfile) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (J,), ratio (J, W)) of the profile's residual-change normaliser: the typical
    rms(Δ residual) / S of uncached intervals starting at each timestep, per gap 1..W steps
    (see :func:`sencache.calibration.correction.calibrate_correction`)."""
    info = profile.metadata.get("correction")
    if not isinstance(info, dict) or not info.get("timesteps") or not info.get("ratio"):
        raise SenCacheError(
            "correction=True needs the profile's residual-change normaliser (metadata['correction']); add it with "
            "sencache.calibration.correction.calibrate_correction(pipe, profile, prompts) and save the profile"
        )
    try:
        t = torch.tensor([float(v) for v in info["timesteps"]], dtype=torch.float64)
        r = torch.tensor([[float(v) for v in row] for row in info["ratio"]], dtype=torch.float64)
    except (TypeError, ValueError):
        r = torch.zeros(0)
    if r.ndim != 2 or r.shape[0] != t.numel() or r.shape[1] < 1 or not bool(torch.isfinite(r).all()) \
            or bool((r <= 0).any()):
        raise SenCacheError("the profile's correction normaliser is malformed; rerun calibrate_correction")
    order = torch.argsort(t)
    return t[order], r[order]


@dataclass
class Track:
    """One uncached trajectory as the correction needs it: per step, the deciding branch's latent
    (1, ...), timestep and block-stack residual (1, ...)."""

    latents: list = field(default_factory=list)
    timesteps: list = field(default_factory=list)
    residuals: list = field(default_factory=list)


def normaliser_at(normaliser: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """ρ̄ at timesteps ``t`` for intervals of ``gap`` steps (gaps beyond the table use its last column)."""
    ts, table = normaliser
    t = t.double().reshape(-1)
    cols = (gap.reshape(-1).long() - 1).clamp(0, table.shape[1] - 1)
    out = torch.empty_like(t)
    for i in range(t.numel()):
        out[i] = interpolate(t[i:i + 1], ts, table[:, int(cols[i])])[0]
    return out


def normaliser_table(per_step: list[list[list[float]]], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, p10, p90) tables (reference step, gap) from the ratios seen per step and gap over many runs:
    geometric medians and percentiles; a step too close to the end for a long gap gets that gap's median
    over the grid."""
    table = np.full((len(per_step), window), np.nan)
    p10, p90 = table.copy(), table.copy()
    for j, by_gap in enumerate(per_step):
        for g, vals in enumerate(by_gap):
            if vals:
                logs = np.log(np.asarray(vals))
                table[j, g] = np.exp(np.median(logs))
                p10[j, g], p90[j, g] = np.exp(np.percentile(logs, 10)), np.exp(np.percentile(logs, 90))
    for g in range(window):
        col = table[:, g]
        if np.isfinite(col).any():
            fill = np.exp(np.nanmedian(np.log(col)))
        else:
            fill = table[:, g - 1] if g else 1.0
        table[:, g] = np.where(np.isfinite(col), col, fill)
    return table, p10, p90


def correction_ratios(profile, track: Track, window: int) -> tuple[np.ndarray, list[list[float | None]]]:
    """Per reference step j and gap g = 1..window: rms(r_(j+g) − r_j) / S(j → j+g) on one uncached
    trajectory (None where j + g is past the end or S is 0)."""

    ts = np.asarray(track.timesteps, dtype=np.float64)
    jx_t, jt_t = profile.lookup(torch.as_tensor(ts))
    jx, jt = jx_t.numpy(), jt_t.numpy()
    T = ts.size
    out = []
    for j in range(T - 1):
        vals: list[float | None] = []
        for k in range(j + 1, j + window + 1):
            if k >= T:
                vals.append(None)
                continue
            x = track.latents[k]
            dx = float(rms_per_sample(x - track.latents[j].to(x.device, x.dtype)).double()[0])
            s = predicted_change(jx[j], dx, jt[j], abs(ts[k] - ts[j]))
            dr = float(rms_per_sample(track.residuals[k] - track.residuals[j]).double()[0])
            vals.append(dr / s if s > 0 and math.isfinite(s) and dr > 0 else None)
        out.append(vals)
    return ts[:-1], out
