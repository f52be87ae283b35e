"""SeaCache as a pure decision rule, in the two forms people run (arXiv 2602.18993; diffusers 0.42.1).

Both accumulate, per sample, the relative L1 change of a SEA-filtered signal (:mod:`sea_filter`) between
consecutive steps, d_k = mean|F_k − F_{k−1}| / (mean|F_{k−1}| + 1e-16), and reuse while the accumulated
A + d_k stays below the threshold; a step that reaches it computes and restarts A at 0. F_k is always kept,
reused step or not. The first ``retention_steps`` and last ``cache_end_steps`` steps compute, so does a
step after ``max_consecutive`` reuses in a row (0: no limit).

* ``signal="latent"``, ``residual_order=1`` — **diffusers' SeaCacheConfig defaults** (threshold 0.25,
  1 retention step, 1 end step, at most 2 reuses in a row, power 3): F is the raw noisy latent on its
  (frames, height, width) grid, and a reused step gets the block-stack residual extrapolated linearly in the
  *step index* from the two most recent refreshes. diffusers decides once per batch on the mean distance;
  this rule decides per sample (the same for batch 1 and for CFG rows, whose latents are equal).
* ``signal="modulated"``, ``residual_order=0`` — **the paper's method**: F is the first block's
  timestep-modulated input (what its first attention layer receives) on the token grid, and a reused step
  holds the last residual (zero order), like TeaCache without the rescaling polynomial.

The adapter supplies F as ``StepInput.grid`` (B, F, H, W, C) and the noise level as ``StepInput.sigma``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from sencache.core.rules.base import Decision, StepInput
from sencache.core.rules.fixed import check_rows, check_step_input
from sencache.core.rules.sea_filter import DEFAULT_POWER_EXP, sea_filter
from sencache.errors import SenCacheError

__all__ = ["SIGNALS", "SeaCacheConfig", "SeaCacheRule", "SeaCacheState", "sea_relative_l1"]

SIGNALS = ("latent", "modulated")
_TINY = 1e-16  # diffusers' guard in the relative-L1 denominator


def sea_relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean|current − previous| / (mean|previous| + 1e-16)`` in float32: (B, ...) -> (B,)."""
    a = current.reshape(current.shape[0], -1).float()
    b = previous.reshape(previous.shape[0], -1).float()
    return (a - b).abs().mean(dim=1) / (b.abs().mean(dim=1) + _TINY)


def _int_at_least(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or int(value) != value or value < minimum:
        raise SenCacheError(f"SeaCacheConfig.{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SeaCacheConfig:
    """Settings of the SeaCache rule (defaults: diffusers 0.42.1's ``SeaCacheConfig``).

    Args:
        threshold: reuse while the accumulated relative L1 change of the filtered signal stays below it.
        residual_order: 1 extrapolates the residual linearly in the step index from the last two refreshes
            (diffusers' default), 0 holds the last one (the paper).
        retention_steps: leading steps that always compute.
        cache_end_steps: trailing steps that always compute.
        max_consecutive: at most this many reused steps in a row (0: no limit).
        power_exp: exponent of the clean-signal power prior of the SEA filter.
        signal: ``"latent"`` (the noisy latent, diffusers) or ``"modulated"`` (the first block's modulated input,
            the paper).
    """

    threshold: float = 0.25
    residual_order: int = 1
    retention_steps: int = 1
    cache_end_steps: int = 1
    max_consecutive: int = 2
    power_exp: float = DEFAULT_POWER_EXP
    signal: str = "latent"

    @classmethod
    def paper(cls, threshold: float = 0.25) -> "SeaCacheConfig":
        """The published method: the first block's modulated input, the last residual held."""
        return cls(threshold=threshold, residual_order=0, signal="modulated")

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise SenCacheError(f"SeaCacheConfig.threshold must be a finite number >= 0, got {t!r}")
        if self.residual_order not in (0, 1) or isinstance(self.residual_order, bool):
            raise SenCacheError(f"SeaCacheConfig.residual_order must be 0 (hold) or 1 (extrapolate), got "
                             f"{self.residual_order!r}")
        for name in ("retention_steps", "cache_end_steps", "max_consecutive"):
            object.__setattr__(self, name, _int_at_least(getattr(self, name), name))
        p = self.power_exp
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p <= 0:
            raise SenCacheError(f"SeaCacheConfig.power_exp must be a positive number, got {p!r}")
        if self.signal not in SIGNALS:
            raise SenCacheError(f"SeaCacheConfig.signal must be one of {SIGNALS}, got {self.signal!r}")

    def build_rule(self) -> "SeaCacheRule":
        """A fresh :class:`SeaCacheRule` for the adapter."""
        return SeaCacheRule(self)


@dataclass
class SeaCacheState:
    """Per-generation state: the previous filtered signal, A, the reuse run and whether a residual exists."""

    accumulated: torch.Tensor  # (B,) float64, A since the last refresh
    consecutive: torch.Tensor  # (B,) long, reuses in a row
    cached: torch.Tensor  # (B,) bool, the adapter holds a residual for this sample
    previous: torch.Tensor | None = None  # (B, ...) the previous step's filtered signal
    last_step: int = -1
    num_steps: int | None = None

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        return int(self.accumulated.shape[0])


class SeaCacheRule:
    """The SeaCache decision. Score = A + d_k (the accumulated change this step would reach); eps = threshold.

    Reasons per sample: "first", "retention", "final", "max_reuse", "reuse", "threshold".
    """

    name = "seacache"
    forecast_clock = "step"  # order-1 forecasts extrapolate in the step index, as diffusers does

    def __init__(self, config: SeaCacheConfig | None = None) -> None:
        self.config = config or SeaCacheConfig()
        self.reads_grid = self.config.signal == "latent"  # the adapter hands the latent grid before the stack
        self.reads_attention_input = self.config.signal == "modulated"  # decided inside the first block
        self.forecasts = self.config.residual_order == 1

    def new_state(self, batch_size: int) -> SeaCacheState:
        """Fresh state for ``batch_size`` samples."""
        if batch_size < 1:
            raise SenCacheError(f"batch_size must be >= 1, got {batch_size}")
        return SeaCacheState(accumulated=torch.zeros(batch_size, dtype=torch.float64),
                             consecutive=torch.zeros(batch_size, dtype=torch.long),
                             cached=torch.zeros(batch_size, dtype=torch.bool))

    def decide(self, state: SeaCacheState, inp: StepInput) -> Decision:
        """Reuse while the accumulated filtered change stays below the threshold (see the module docstring)."""
        cfg = self.config
        B = state.batch_size
        check_step_input(state, inp, B)
        if inp.grid is None or inp.sigma is None:
            raise SenCacheError("SeaCache needs StepInput.grid (B, F, H, W, C) and StepInput.sigma from the adapter")
        if inp.grid.shape[0] != B:
            raise SenCacheError(f"grid has batch {inp.grid.shape[0]}, expected {B}")
        step, T = inp.step, inp.num_steps
        signal = sea_filter(inp.grid.detach(), inp.sigma, cfg.power_exp)
        if state.previous is not None and state.previous.shape != signal.shape:
            raise SenCacheError(f"the SeaCache signal changed shape from {tuple(state.previous.shape)} to "
                             f"{tuple(signal.shape)} mid-generation")
        first = ~state.cached | (state.previous is None)
        retained = step < cfg.retention_steps
        final = step >= T - cfg.cache_end_steps
        capped = (state.consecutive >= cfg.max_consecutive) if cfg.max_consecutive else torch.zeros(B, dtype=torch.bool)
        forced = first | retained | final | capped
        if state.previous is None:
            distance = torch.zeros(B, dtype=torch.float64)
        else:
            distance = sea_relative_l1(signal, state.previous).double().cpu()
        candidate = state.accumulated + distance
        reuse = ~forced & (candidate < cfg.threshold)
        state.accumulated = torch.where(reuse, candidate, torch.zeros_like(candidate))
        state.consecutive = torch.where(reuse, state.consecutive + 1, state.consecutive)
        state.previous = signal
        state.last_step, state.num_steps = step, T
        reasons = ["first" if f else "retention" if retained else "final" if final else "max_reuse" if c
                   else "reuse" if r else "threshold"
                   for f, c, r in zip(first.tolist(), capped.tolist(), reuse.tolist())]
        order = torch.full((B,), cfg.residual_order, dtype=torch.long) if self.forecasts else None
        return Decision(reuse=reuse, score=torch.where(forced, torch.zeros_like(candidate), candidate).float(),
                        eps=float(cfg.threshold), reason=reasons, order=order)

    def observe_refresh(self, state: SeaCacheState, inp: StepInput, rows: torch.Tensor,
                        residual: torch.Tensor | None) -> None:
        """The refreshed rows hold a residual and start a new reuse run."""
        rows = check_rows(rows, state.batch_size)
        state.cached = state.cached | rows
        state.consecutive = torch.where(rows, torch.zeros_like(state.consecutive), state.consecutive)
        state.accumulated = torch.where(rows, torch.zeros_like(state.accumulated), state.accumulated)
