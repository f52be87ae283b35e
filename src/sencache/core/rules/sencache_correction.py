"""SenCache's per-sample correction (``correction=True``): each sample's S scaled by how much it really changed.

Before the references move, :func:`note_interval` keeps what S predicted for the interval that ends at this refresh;
after the stack ran, :func:`learn_correction` compares the real change of the block-stack residual with it.
"""

from __future__ import annotations

import math

import torch

from sencache.core.correction import normaliser_at


def note_interval(state, step: int, batch: int, raw: torch.Tensor | None,
                   reuse: torch.Tensor) -> None:
    """Before the references move: remember, for the rows that refresh now, the S predicted for the
    interval since their previous refresh, the timestep it started at and its length in steps."""
    nan = torch.full((batch,), math.nan, dtype=torch.float64)
    if state.factor is None or state.factor.shape[0] != batch or raw is None:
        state.factor = torch.ones(batch, dtype=torch.float64)
        state.has_residual = torch.zeros(batch, dtype=torch.bool)
        state.last_ratio = nan.clone()
        state.residual_ref = None
        state.pending_s, state.pending_t = nan.clone(), nan.clone()
        state.pending_gap = torch.zeros(batch, dtype=torch.long)
        state.step_ref = torch.full((batch,), step, dtype=torch.long)
        return
    refresh = ~reuse.cpu()
    state.pending_s = torch.where(refresh, raw, nan)
    state.pending_t = torch.where(refresh, state.t_ref, nan)
    state.pending_gap = torch.where(refresh, step - state.step_ref, torch.zeros_like(state.step_ref))
    state.step_ref = torch.where(refresh, torch.full_like(state.step_ref, step), state.step_ref)


def learn_correction(state, norm, config, inp, rows: torch.Tensor, residual: torch.Tensor | None) -> None:
    """At a refresh: move each refreshed sample's correction factor towards its observed real / predicted change
    (see :meth:`sencache.core.rules.sencache.SenCacheRule.observe_refresh` for the units)."""
    if not config.correction or residual is None:
        return
    batch = rows.shape[0]
    if state.factor is None or state.factor.shape[0] != batch:
        return
    rows = rows.cpu().bool()
    idx = rows.nonzero().flatten()
    if idx.numel() == 0:
        return
    new = residual.detach().float()
    if state.residual_ref is None or state.residual_ref.shape[1:] != new.shape[1:]:
        state.residual_ref = new.new_zeros((batch, *new.shape[1:]))
        state.has_residual = torch.zeros(batch, dtype=torch.bool)
    prev = state.residual_ref.index_select(0, idx.to(new.device))
    real = inp.rms(new - prev).double().cpu()  # the whole residual, also when it is sharded
    s_pred = state.pending_s.index_select(0, idx)
    t_prev = state.pending_t.index_select(0, idx)
    gap = state.pending_gap.index_select(0, idx)
    had = state.has_residual.index_select(0, idx)
    ok = had & torch.isfinite(s_pred) & (s_pred > 0) & torch.isfinite(t_prev) & torch.isfinite(real) & (gap > 0)
    if bool(ok.any()):
        scale = normaliser_at(norm, torch.where(ok, t_prev, torch.zeros_like(t_prev)), gap.clamp_min(1))
        q = real / (s_pred * scale)
        lo, hi = config.correction_bounds
        m = config.correction_momentum
        old = state.factor.index_select(0, idx)
        upd = (m * old + (1.0 - m) * q).clamp(lo, hi)
        state.factor[idx[ok]] = upd[ok]
        state.last_ratio[idx[ok]] = q[ok]
    state.residual_ref[idx.to(new.device)] = new
    state.has_residual[idx] = True
    state.pending_s[idx] = math.nan
