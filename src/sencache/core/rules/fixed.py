"""Fixed-interval caching and the no-cache control, as pure decision rules.

``FixedRule`` computes at step 0, at every warm-up step, then at steps ``warmup, warmup + interval, ...``
and reuses in between (pattern: compute, then ``interval - 1`` reuses), and always computes the last
``final_steps`` steps. It has no error estimate (score None). ``NoCacheRule`` always computes.

This module also holds the small input checks every baseline rule shares (``check_step_input``,
``check_rows``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from sencache.core.rules.base import Decision, StepInput, in_final_steps
from sencache.errors import SenCacheError

__all__ = ["FixedConfig", "FixedRule", "FixedState", "NoCacheRule", "check_step_input", "check_rows"]

# Rules without a threshold report eps = NaN ("not applicable").
NO_THRESHOLD = math.nan


def check_step_input(state: Any, inp: StepInput, batch_size: int) -> None:
    """One ``decide`` per step, in increasing order, one step count per generation, matching batch.

    ``state`` needs ``last_step`` and ``num_steps`` attributes; a rule updates them after the call.
    """
    if inp.num_steps < 1 or not 0 <= inp.step < inp.num_steps:
        raise SenCacheError(
            f"step {inp.step} is outside 0..{inp.num_steps - 1}: pass a 0-based step index and the total step count"
        )
    if inp.step <= state.last_step:
        raise SenCacheError(
            f"decide() got step {inp.step} after step {state.last_step}: call it once per step, in order, "
            "and call new_state() for every generation"
        )
    if state.num_steps is not None and state.num_steps != inp.num_steps:
        raise SenCacheError(f"num_steps changed from {state.num_steps} to {inp.num_steps} within one generation: "
                            "call new_state()")
    if inp.latent.shape[0] != batch_size:
        raise SenCacheError(
            f"latent has batch {inp.latent.shape[0]} but the state was made for {batch_size}: "
            f"call new_state({inp.latent.shape[0]})"
        )


def check_rows(rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Validate an ``observe_refresh`` row mask: a (B,) bool tensor."""
    if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool or tuple(rows.shape) != (batch_size,):
        got = f"{tuple(rows.shape)} {rows.dtype}" if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise SenCacheError(f"rows must be a (B,) bool mask with B={batch_size}, got {got}")
    return rows


def _nonneg_int(value: Any, what: str, minimum: int = 0) -> int:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or value < minimum:
        raise SenCacheError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class FixedConfig:
    """Settings of the fixed-interval rule.

    Args:
        interval: compute every ``interval``-th step (1 = never reuse, 2 = every other step).
        warmup_steps: leading steps that always compute; the interval pattern starts at this step.
        final_steps: the last ``final_steps`` steps always compute.
    """

    interval: int = 2
    warmup_steps: int = 0
    final_steps: int = 0

    def build_rule(self) -> "FixedRule":
        """A fresh :class:`FixedRule` for the adapter."""
        return FixedRule(self)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", _nonneg_int(self.interval, "FixedConfig.interval", 1))
        object.__setattr__(self, "warmup_steps", _nonneg_int(self.warmup_steps, "FixedConfig.warmup_steps"))
        object.__setattr__(self, "final_steps", _nonneg_int(self.final_steps, "FixedConfig.final_steps"))


@dataclass
class FixedState:
    """Per-generation state of the fixed rule: which samples hold a residual, the last step seen."""
    cached: torch.Tensor  # (B,) bool, the adapter holds a residual for this sample
    last_step: int = -1
    num_steps: int | None = None

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        return int(self.cached.shape[0])


class FixedRule:
    """Compute on a fixed step pattern. Reasons: "first", "warmup", "final", "interval", "reuse".

    A sample with nothing cached yet (the adapter never reported a refresh) always computes.
    """

    name = "fixed"

    def __init__(self, config: FixedConfig | None = None) -> None:
        if config is not None and not isinstance(config, FixedConfig):
            raise SenCacheError("FixedRule takes a FixedConfig: FixedRule(FixedConfig(interval=...))")
        self.config = config or FixedConfig()

    def computes_at(self, step: int, num_steps: int) -> bool:
        """Whether the pattern computes at ``step`` (assuming the sample has a cached residual)."""
        cfg = self.config
        return (
            step == 0
            or step < cfg.warmup_steps
            or in_final_steps(step, num_steps, cfg.final_steps)
            or (step - cfg.warmup_steps) % cfg.interval == 0
        )

    def new_state(self, batch_size: int) -> FixedState:
        """Fresh state for ``batch_size`` samples."""
        if batch_size < 1:
            raise SenCacheError(f"batch_size must be >= 1, got {batch_size}")
        return FixedState(cached=torch.zeros(batch_size, dtype=torch.bool))

    def decide(self, state: FixedState, inp: StepInput) -> Decision:
        """Reuse on the steps between the pattern's computed steps (after warm-up, before the final steps)."""
        cfg = self.config
        check_step_input(state, inp, state.batch_size)
        state.last_step, state.num_steps = inp.step, inp.num_steps
        step, T = inp.step, inp.num_steps
        cached = state.cached.to(inp.latent.device)  # state stays on the CPU; only the verdict moves
        compute = self.computes_at(step, T)
        reuse = cached & (not compute)

        if step < cfg.warmup_steps:
            why = "warmup"
        elif in_final_steps(step, T, cfg.final_steps):
            why = "final"
        elif compute:
            why = "interval"
        else:
            why = "reuse"
        reasons = ["first" if (step == 0 or not c) else why for c in state.cached.tolist()]
        return Decision(reuse=reuse, score=None, eps=NO_THRESHOLD, reason=reasons)

    def observe_refresh(self, state: FixedState, inp: StepInput, rows: torch.Tensor,
                        residual: torch.Tensor | None) -> None:
        """Mark the refreshed samples as holding a residual."""
        rows = check_rows(rows, state.batch_size)
        state.cached = state.cached | rows.to(state.cached.device)


class NoCacheRule:
    """Always compute: the uncached reference, run through the same adapter path."""

    name = "none"

    def new_state(self, batch_size: int) -> int:
        """Fresh state for ``batch_size`` samples."""
        if batch_size < 1:
            raise SenCacheError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size

    def decide(self, state: int, inp: StepInput) -> Decision:
        """Never reuse."""
        if inp.latent.shape[0] != state:
            raise SenCacheError(
                f"latent has batch {inp.latent.shape[0]} but the state was made for {state}: "
                f"call new_state({inp.latent.shape[0]})"
            )
        reuse = torch.zeros(state, dtype=torch.bool, device=inp.latent.device)
        return Decision(reuse=reuse, score=None, eps=NO_THRESHOLD, reason=["no_cache"] * state)

    def observe_refresh(self, state: int, inp: StepInput, rows: torch.Tensor, residual: torch.Tensor | None) -> None:
        """Nothing to learn."""
        check_rows(rows, state)


@dataclass(frozen=True)
class NoCacheConfig:
    """Run every step through the adapter without reusing (for traces and residual recording)."""

    def build_rule(self) -> NoCacheRule:
        """A fresh :class:`NoCacheRule` for the adapter."""
        return NoCacheRule()
