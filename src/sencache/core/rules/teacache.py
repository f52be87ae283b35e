"""TeaCache as a pure decision rule (Liu et al., CVPR 2025, arXiv 2411.19108).

TeaCache watches the timestep-modulated input of the first transformer block, F_k. Its relative L1
change against the previous step,

    d_k = mean|F_k - F_{k-1}| / mean|F_{k-1}|        (per sample)

is passed through a polynomial fitted offline (it maps input change to model-output change) and summed:
``A += poly(d_k)``. A sample reuses its cached residual while ``A < threshold``; the step where A reaches
the threshold computes and restarts A at 0. The first step and the last ``final_steps`` steps always
compute. d_k is always taken against the previous *step*, computed or reused, not the last refresh.

The signal is ``StepInput.modulation``. When the adapter passes none, the rule falls back to the
transformer's noisy input latent (``StepInput.latent``): the same relative-L1 test, on x_t instead of
the modulated input. It must then stay on the latent for the whole generation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sencache.core.rules.base import Decision, StepInput, in_final_steps
from sencache.core.rules.fixed import check_rows, check_step_input
from sencache.errors import SenCacheError

__all__ = ["TeaCacheConfig", "TeaCacheRule", "TeaCacheState", "relative_l1", "fit_rescale_polynomial", "polyval"]


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per-sample relative L1 change ``mean|current - previous| / mean|previous|``: (B, ...) -> (B,), float32.

    A zero ``previous`` is clamped to the smallest float32, so any change reads as huge (forcing a
    compute) and no change reads as 0, never NaN.
    """
    if current.shape != previous.shape:
        raise SenCacheError(f"relative_l1 needs equal shapes, got {tuple(current.shape)} and {tuple(previous.shape)}")
    a = current.detach().reshape(current.shape[0], -1).float()
    b = previous.detach().reshape(previous.shape[0], -1).float()
    num = (a - b).abs().mean(dim=1)
    den = b.abs().mean(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return num / den


def polyval(coefficients: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """Evaluate a polynomial (highest power first, like numpy.polyval) elementwise, by Horner's rule."""
    y = torch.zeros_like(x)
    for c in coefficients:
        y = y * x + c
    return y


def fit_rescale_polynomial(input_changes, output_changes, order: int = 1) -> tuple[float, ...]:
    """Least-squares polynomial from input change d_k to output change, highest power first.

    ``input_changes`` and ``output_changes`` are paired samples (any array-likes or tensors, flattened),
    e.g. relative L1 change of the modulated input and of the model output between consecutive steps of
    uncached calibration runs. The paper fits order 4; order 1 gets most of the gain. The result plugs
    straight into ``TeaCacheConfig(coefficients=...)``.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise SenCacheError(f"order must be an integer >= 1 (1 or 4 in the paper), got {order!r}")
    x = _as_float_array(input_changes)
    y = _as_float_array(output_changes)
    if x.shape != y.shape:
        raise SenCacheError(f"input_changes and output_changes must pair up, got {x.size} and {y.size} values")
    if x.size < order + 1:
        raise SenCacheError(f"an order-{order} fit needs at least {order + 1} points, got {x.size}: "
                            "record more steps or prompts")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SenCacheError("input_changes/output_changes contain NaN or inf: drop those steps before fitting")
    return tuple(float(c) for c in np.polyfit(x, y, order))


def _as_float_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class TeaCacheConfig:
    """Settings of the TeaCache rule.

    Args:
        threshold: δ; reuse while the accumulated rescaled change A (unit-free: rescaled relative L1 changes
            of the first block's modulation) stays below it (paper: 0.1 slow, 0.2 fast; the Wan 2.1 1.3B code
            uses 0.05-0.08).
        coefficients: rescaling polynomial, highest power first (numpy.polyval order). The default
            (1.0, 0.0) is the identity, i.e. no rescaling; fit your own with :func:`fit_rescale_polynomial`.
            A fitted polynomial can go negative near 0; like the paper's rule, this one adds it unclamped.
        final_steps: the last ``final_steps`` steps always compute (the paper computes the last step).
    """

    threshold: float = 0.1
    coefficients: Sequence[float] = (1.0, 0.0)
    final_steps: int = 1

    def build_rule(self) -> "TeaCacheRule":
        """A fresh :class:`TeaCacheRule` for the adapter."""
        return TeaCacheRule(self)

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise SenCacheError(f"TeaCacheConfig.threshold must be a finite number >= 0, got {self.threshold!r}")
        try:
            coeffs = tuple(float(c) for c in _as_float_array(self.coefficients))
        except (TypeError, ValueError):
            raise SenCacheError(
                "TeaCacheConfig.coefficients must be numbers, highest power first (numpy.polyval order)"
            ) from None
        if not coeffs or not all(math.isfinite(c) for c in coeffs):
            raise SenCacheError("TeaCacheConfig.coefficients must be a non-empty list of finite numbers, "
                                "highest power first")
        object.__setattr__(self, "coefficients", coeffs)
        f = self.final_steps
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(f) or int(f) != f or f < 0:
            raise SenCacheError(f"TeaCacheConfig.final_steps must be an integer >= 0, got {f!r}")
        object.__setattr__(self, "final_steps", int(f))


@dataclass
class TeaCacheState:
    """Per-generation state of TeaCache: the previous modulation and the accumulated rescaled change per sample."""
    accumulated: torch.Tensor  # (B,) float64, A since the last refresh
    cached: torch.Tensor  # (B,) bool, the adapter holds a residual for this sample
    previous: torch.Tensor | None = None  # (B, ...) float32 copy of the previous step's signal
    source: str | None = None  # "modulation" or "latent", fixed at the first step
    last_step: int = -1
    num_steps: int | None = None

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        return int(self.accumulated.shape[0])


class TeaCacheRule:
    """The TeaCache decision rule. Score = accumulated A (before any reset); eps = threshold.

    Reasons per sample: "first" (step 0 or nothing cached yet), "final", "reuse", "threshold".
    """

    reads_modulation = True  # the adapter decides at the first block, where the modulation is known

    name = "teacache"

    def __init__(self, config: TeaCacheConfig | None = None) -> None:
        if config is not None and not isinstance(config, TeaCacheConfig):
            raise SenCacheError("TeaCacheRule takes a TeaCacheConfig: TeaCacheRule(TeaCacheConfig(threshold=...))")
        self.config = config or TeaCacheConfig()

    def new_state(self, batch_size: int) -> TeaCacheState:
        """Fresh state for ``batch_size`` samples."""
        if batch_size < 1:
            raise SenCacheError(f"batch_size must be >= 1, got {batch_size}")
        return TeaCacheState(
            accumulated=torch.zeros(batch_size, dtype=torch.float64),
            cached=torch.zeros(batch_size, dtype=torch.bool),
        )

    @staticmethod
    def signal(inp: StepInput) -> tuple[str, torch.Tensor]:
        """The tensor TeaCache watches: the modulation if given, else the noisy latent."""
        if inp.modulation is not None:
            return "modulation", inp.modulation
        return "latent", inp.latent

    def decide(self, state: TeaCacheState, inp: StepInput) -> Decision:
        """Reuse while the accumulated rescaled change of the first block's modulation stays under the threshold."""
        cfg = self.config
        B = state.batch_size
        check_step_input(state, inp, B)
        source, sig = self.signal(inp)
        if sig.shape[0] == 1 and B > 1:
            sig = sig.expand(B, *sig.shape[1:])  # one conditioning shared by the batch
        if sig.shape[0] != B:
            raise SenCacheError(f"{source} has batch {sig.shape[0]}, expected {B} (or 1): pass one row per sample")
        if state.source is not None and source != state.source:
            raise SenCacheError(f"the signal switched from {state.source} to {source} mid-generation: "
                                "pass modulation at every step or never")
        if state.previous is not None and state.previous.shape != sig.shape:
            raise SenCacheError(f"{source} shape changed from {tuple(state.previous.shape)} to {tuple(sig.shape)} "
                                "mid-generation")

        device = inp.latent.device
        if state.accumulated.device != device:
            state.accumulated = state.accumulated.to(device)
            state.cached = state.cached.to(device)
        step, T = inp.step, inp.num_steps

        first = (~state.cached) | (step == 0) | (state.previous is None)
        final = in_final_steps(step, T, cfg.final_steps)
        forced = first | final

        if state.previous is None:
            change = torch.zeros(B, dtype=torch.float64, device=device)
        else:
            change = relative_l1(sig, state.previous).to(device=device, dtype=torch.float64)
        acc = state.accumulated + polyval(cfg.coefficients, change)
        below = acc < cfg.threshold
        reuse = below & ~forced

        score = torch.where(forced, torch.zeros_like(acc), acc)
        state.accumulated = torch.where(reuse, acc, torch.zeros_like(acc))
        # Always keep this step's signal: the next change is measured against it, reused or not.
        state.previous = sig.detach().float().clone()
        state.source, state.last_step, state.num_steps = source, step, T

        reasons = []
        for f, r in zip(first.tolist(), reuse.tolist()):
            reasons.append("first" if f else "final" if final else "reuse" if r else "threshold")
        return Decision(reuse=reuse, score=score.float(), eps=float(cfg.threshold), reason=reasons)

    def observe_refresh(
        self, state: TeaCacheState, inp: StepInput, rows: torch.Tensor, residual: torch.Tensor | None
    ) -> None:
        """Mark ``rows`` as cached and restart their accumulator (the residual itself is not needed)."""
        rows = check_rows(rows, state.batch_size).to(state.accumulated.device)
        state.accumulated = torch.where(rows, torch.zeros_like(state.accumulated), state.accumulated)
        state.cached = state.cached | rows
