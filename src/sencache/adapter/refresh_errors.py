"""What a refresh reveals: the real error holding or forecasting would have made at this step, per sample.

When the block stack runs for a sample, its new residual r is compared, on the device, with the cached one
(r_last, what holding gives) and with the linear forecast through the two cached refreshes
(r_last + (r_last − r_prev)·(t − t_last)/(t_last − t_prev)). No residual is stored for it: both references are the
cache the adapter already keeps. One host copy of 2·R numbers per refresh.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def refresh_errors(new: torch.Tensor, rows: torch.Tensor | None, last: torch.Tensor, prev: torch.Tensor | None,
                   t_now: torch.Tensor, t_last: torch.Tensor, t_prev: torch.Tensor, had: torch.Tensor,
                   rms: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hold, linear) errors as (B,) float64 CPU tensors, NaN where a row had no cache (or no two refreshes).

    ``new`` holds the residuals of the computing rows (``rows``: their indices, None = the whole batch), ``last`` and
    ``prev`` the cached residuals of the whole batch, ``t_*`` (B,) the clock of now and of the two refreshes, ``had``
    (B,) which rows had a cached residual, ``rms`` the per-sample RMS (across ranks under context parallelism)."""
    batch = had.shape[0]
    idx = torch.arange(batch) if rows is None else rows.cpu()
    dev_idx = idx.to(new.device)
    last_rows = last.index_select(0, dev_idx).to(new.dtype)
    step = (t_last - t_prev).index_select(0, idx)
    two = torch.isfinite(step) & (step != 0) & had.index_select(0, idx)
    hold = rms(new - last_rows)
    if prev is not None and bool(two.any()):
        scale = torch.where(two, (t_now.index_select(0, idx) - t_last.index_select(0, idx))
                            / torch.where(two, step, torch.ones_like(step)), torch.zeros_like(step))
        factor = scale.to(device=new.device, dtype=new.dtype).reshape(-1, *([1] * (new.ndim - 1)))
        prev_rows = prev.index_select(0, dev_idx).to(new.dtype)
        linear = rms(new - (last_rows + (last_rows - prev_rows) * factor))
    else:
        linear = torch.full_like(hold, math.nan)
    both = torch.stack([hold.float(), linear.float()]).double().cpu()  # the one host sync
    out_hold = torch.full((batch,), math.nan, dtype=torch.float64)
    out_lin = out_hold.clone()
    known = had.index_select(0, idx)
    out_hold[idx] = torch.where(known, both[0], torch.full_like(both[0], math.nan))
    out_lin[idx] = torch.where(two, both[1], torch.full_like(both[1], math.nan))
    return out_hold, out_lin
