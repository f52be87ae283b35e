"""The cached block-stack residuals of one generation, per CFG branch, and what a reusing row gets from them.

Per branch: the video-stream residual of each row's last refresh, the text-stream one (blocks that return it),
which rows hold one, and, for forecasting rules, the refresh before the last with both refreshes' clock values.
Residuals live with the activations, or in (pinned) host memory with ``offload``; the flags and clock values on
the CPU, where all decision state lives.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sencache.adapter.refresh_errors import refresh_errors


def host_copy(old: torch.Tensor | None, value: torch.Tensor, pinned: bool) -> torch.Tensor:
    """A host copy of ``value``, reusing ``old`` when it fits (pinned next to CUDA).

    The device-to-host copy is non-blocking; it is ordered on the current stream before any later host-to-device
    copy of the same buffer, and the host never reads it."""
    pin = pinned and value.is_cuda
    if old is None or old.device.type != "cpu" or old.shape != value.shape or old.dtype != value.dtype \
            or old.is_pinned() != pin:
        old = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=pin)
    old.copy_(value, non_blocking=pin)
    return old


def _nan(batch: int) -> torch.Tensor:
    return torch.full((batch,), math.nan, dtype=torch.float64)


class ResidualStore:
    """Per-branch cached residuals of one generation (and one expert) for ``batch`` rows.

    Args:
        batch: rows of the generation.
        offload: keep residuals in host memory.
        forecasts: keep the refresh before the last, for order-1 forecasts.
    """

    def __init__(self, batch: int, offload: bool = False, forecasts: bool = False):
        self.batch, self.offload, self.forecasts = batch, bool(offload), bool(forecasts)
        self.pinned = torch.cuda.is_available()  # pinned host buffers only make sense next to CUDA
        self.residual: dict[str, torch.Tensor] = {}  # branch -> (B, ...) video-stream residual
        self.encoder_residual: dict[str, torch.Tensor] = {}
        self.has_residual: dict[str, torch.Tensor] = {}  # branch -> (B,) bool
        self.previous: dict[str, torch.Tensor] = {}  # branch -> (B, ...) residual of the refresh before the last
        self.refresh_t: dict[str, torch.Tensor] = {}  # branch -> (B,) float64 clock of the last refresh
        self.prev_t: dict[str, torch.Tensor] = {}  # branch -> (B,) float64 clock of the one before (NaN: none)

    def has(self, branch: str) -> torch.Tensor:
        """(B,) bool: which rows hold a residual of ``branch``."""
        return self.has_residual.get(branch, torch.zeros(self.batch, dtype=torch.bool))

    def cached(self, branch: str, device: torch.device, encoder: bool = False) -> torch.Tensor:
        """The branch's cached residual on the stack's device (copied back if offloaded)."""
        store = self.encoder_residual if encoder else self.residual
        return store[branch].to(device=device, non_blocking=True)

    def put(self, branch: str, rows: torch.Tensor | None, value: torch.Tensor, now: torch.Tensor,
            encoder: bool = False) -> None:
        """Store the new residual of the computing ``rows`` (CPU indices; None: every row) at clock ``now``."""
        store = self.encoder_residual if encoder else self.residual
        value = value.detach()
        if self.forecasts and not encoder:
            self._shift_history(branch, rows, now)
        if rows is None:
            store[branch] = host_copy(store.get(branch), value, self.pinned) if self.offload else value
            return
        full = store.get(branch)
        if full is None or full.shape[1:] != value.shape[1:]:
            full = value.new_zeros((self.batch, *value.shape[1:]))
        else:  # merge on the compute device: an offloaded copy may still be in flight
            full = full.to(device=value.device, non_blocking=True).clone()
        full[rows.to(full.device)] = value.to(full.dtype)
        store[branch] = host_copy(store.get(branch), full, self.pinned) if self.offload else full

    def mark(self, branch: str, computed: torch.Tensor) -> None:
        """The rows that just ran now hold a residual."""
        self.has_residual[branch] = self.has(branch) | computed

    def refresh_errors(self, branch: str, new: torch.Tensor, rows: torch.Tensor | None, now: torch.Tensor,
                       rms: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Before ``new`` replaces the cache: the (hold, linear) errors holding and forecasting would have made for
        the rows that just ran (NaN where a row had no cache), measured on the device."""
        had = self.has(branch)
        if branch not in self.residual or not bool(had.any()):
            return _nan(self.batch), _nan(self.batch)
        last = self.cached(branch, new.device)
        prev = self.previous[branch].to(device=new.device, non_blocking=True) if branch in self.previous else None
        return refresh_errors(new, rows, last, prev, now, self.refresh_t.get(branch, _nan(self.batch)),
                              self.prev_t.get(branch, _nan(self.batch)), had, rms)

    def reused(self, branch: str, device: torch.device, order: torch.Tensor | None, computed: torch.Tensor,
               now: torch.Tensor) -> torch.Tensor:
        """What the reusing rows get: the cached residual, extrapolated where ``order`` says 1 and the row has two
        refreshes, r̂ = r_last + (r_last − r_prev)·(t − t_last) / (t_last − t_prev)."""
        cached = self.cached(branch, device)
        if order is None or branch not in self.previous or not bool((order > 0).any()):
            return cached
        t_last, t_prev = self.refresh_t[branch], self.prev_t[branch]
        step = t_last - t_prev
        ok = (order > 0) & ~computed & torch.isfinite(t_prev) & (step != 0)
        if not bool(ok.any()):
            return cached
        scale = torch.where(ok, (now - t_last) / torch.where(ok, step, torch.ones_like(step)), torch.zeros_like(step))
        idx = ok.nonzero().flatten()
        dev_idx = idx.to(cached.device)
        prev = self.previous[branch].to(device=device, non_blocking=True).index_select(0, dev_idx)
        last = cached.index_select(0, dev_idx)
        factor = scale.index_select(0, idx).to(device=cached.device, dtype=cached.dtype)
        factor = factor.reshape(-1, *([1] * (cached.ndim - 1)))
        return cached.index_copy(0, dev_idx, last + (last - prev) * factor)

    def nbytes(self) -> dict[str, int]:
        """Bytes of cached residuals held per branch (video and text streams), wherever they live."""
        out: dict[str, int] = {}
        for store in (self.residual, self.encoder_residual):
            for branch, value in store.items():
                out[branch] = out.get(branch, 0) + value.numel() * value.element_size()
        return out

    def _shift_history(self, branch: str, rows: torch.Tensor | None, now: torch.Tensor) -> None:
        """Before the refreshing rows get their new residual: the old one becomes the previous refresh."""
        old = self.residual.get(branch)
        if rows is None and not self.offload:
            # the whole batch refreshes: the old residual becomes the previous one as it is (put stores a new
            # tensor in its place, nothing writes into it); rows that had none keep t_prev = NaN
            if old is not None:
                had = self.has(branch)
                self.previous[branch] = old
                self.prev_t[branch] = torch.where(had, self.refresh_t[branch], self.prev_t[branch]) \
                    if branch in self.prev_t else torch.where(had, self.refresh_t[branch], math.nan)
            self.refresh_t[branch] = now
            return
        mask = torch.ones(self.batch, dtype=torch.bool) if rows is None else \
            torch.zeros(self.batch, dtype=torch.bool).index_fill_(0, rows.cpu(), True)
        last_t = self.refresh_t.get(branch, _nan(self.batch))
        had = self.has(branch) & mask
        if old is not None and bool(had.any()):
            prev = self.previous.get(branch)
            if prev is None or prev.shape != old.shape:
                prev = torch.zeros_like(old)
            idx = had.nonzero().flatten().to(old.device)
            prev = prev.to(old.device).index_copy(0, idx, old.index_select(0, idx))
            self.previous[branch] = host_copy(self.previous.get(branch), prev, self.pinned) if self.offload else prev
        self.prev_t[branch] = torch.where(had, last_t, self.prev_t.get(branch, _nan(self.batch)))
        self.refresh_t[branch] = torch.where(mask, now, last_t)
