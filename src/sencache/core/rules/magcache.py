"""MagCache as a pure decision rule (Ma et al., NeurIPS 2025, arXiv 2506.09045).

MagCache's signal is the magnitude ratio of consecutive block-stack residuals,
``gamma_k = mean over tokens of ||r_k|| / ||r_{k-1}||`` (per-token L2 norms). The ratio curve is nearly
the same for every prompt, so it is measured once, in one uncached run, and stored as a table indexed
by step. At run time the decision depends on the table and the step index only:

after a refresh at step ``k_hat``, each following step ``i`` does
``P *= gamma_i``, ``E += |1 - P|``, ``count += 1``; the sample reuses its cached residual while
``E <= threshold`` and ``count <= max_skip``, otherwise it refreshes and ``P, E, count`` restart at
``1, 0, 0``. The first ``round(retention_ratio * T)`` steps, step 0 and the last ``final_steps`` steps
always compute.

Everything here is per sample (batch dimension first). With a shared table all samples follow the same
schedule unless their refresh histories differ (e.g. the adapter forced a refresh for some of them).

Calibration helpers (:func:`magnitude_ratio`, :func:`ratios_from_residual_norms`,
:class:`MagCacheCalibration`) turn the residuals of one uncached run into a ratio table.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sencache.core.rules.base import Decision, StepInput, in_final_steps
from sencache.core.rules.fixed import check_rows, check_step_input
from sencache.errors import SenCacheError

__all__ = [
    "MagCacheConfig",
    "MagCacheRule",
    "MagCacheState",
    "MagCacheCalibration",
    "interpolate_ratios",
    "nearest_table_index",
    "retention_steps",
    "token_norms",
    "magnitude_ratio",
    "ratios_from_residual_norms",
]


# --------------------------------------------------------------------------------------------------
# Table helpers
# --------------------------------------------------------------------------------------------------


def nearest_table_index(step: int, num_steps: int, table_len: int) -> int:
    """Index into a ``table_len``-entry table for ``step`` of a ``num_steps``-step generation.

    Both are mapped to normalised positions in [0, 1] (first entry 0, last entry 1) and the nearest
    table entry wins, ties rounding up. Integer arithmetic keeps the result exact (no float ties).
    """
    if table_len < 1 or num_steps < 1:
        raise SenCacheError(f"need table_len >= 1 and num_steps >= 1, got {table_len} and {num_steps}")
    if not 0 <= step < num_steps:
        raise SenCacheError(f"step {step} is outside 0..{num_steps - 1}")
    if num_steps == 1 or table_len == 1:
        return 0
    # round(step * (L-1) / (T-1)) with half-up rounding, as integers
    return (2 * step * (table_len - 1) + (num_steps - 1)) // (2 * (num_steps - 1))


def interpolate_ratios(ratios: Sequence[float], num_steps: int) -> tuple[float, ...]:
    """Map a calibration table to ``num_steps`` entries by nearest interpolation over step position.

    Identity when ``num_steps == len(ratios)``. Entry 0 maps to entry 0 and the last to the last, so the
    sharp drop at the end of the curve stays at the end whatever the step count.
    """
    table = tuple(float(r) for r in ratios)
    if not table:
        raise SenCacheError("ratios is empty: pass one ratio per calibration step")
    return tuple(table[nearest_table_index(i, num_steps, len(table))] for i in range(num_steps))


def retention_steps(retention_ratio: float, num_steps: int) -> int:
    """Number of leading steps that always compute: ``retention_ratio * num_steps`` rounded half up.

    Rounded rather than ceiled so that float noise (0.2 * 15 = 3.0000000000000004) cannot add a step.
    """
    return int(math.floor(retention_ratio * num_steps + 0.5))


# --------------------------------------------------------------------------------------------------
# Config and rule
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MagCacheConfig:
    """Settings of the MagCache rule.

    Args:
        ratios: the calibrated magnitude-ratio table, one unit-free entry per calibration step (entry 0 is
            conventionally 1.0 and never used, since step 0 always computes). For CFG models pass the
            conditional branch's table. Stored as a tuple of floats.
        threshold: δ, the largest accumulated error E (unit-free, a sum of |1 − ratio|) that still allows a
            reuse (paper: 0.12; 0.06 robust).
        max_skip: K, the most consecutive reuses after a refresh, in steps (paper on Wan 2.1: 2 slow, 4 fast).
        retention_ratio: fraction of the leading steps that always compute, in [0, 1] (paper: 0.2).
        final_steps: the last ``final_steps`` steps always compute (0 = the paper's rule).
    """

    ratios: Sequence[float]
    threshold: float = 0.12
    max_skip: int = 2
    retention_ratio: float = 0.2
    final_steps: int = 0

    def build_rule(self) -> "MagCacheRule":
        """A fresh :class:`MagCacheRule` for the adapter."""
        return MagCacheRule(self)

    def __post_init__(self) -> None:
        try:
            table = tuple(float(r) for r in (self.ratios.tolist() if hasattr(self.ratios, "tolist") else self.ratios))
        except (TypeError, ValueError):
            raise SenCacheError(
                "MagCacheConfig.ratios must be a sequence of numbers, one ratio per calibration step"
            ) from None
        if not table:
            raise SenCacheError("MagCacheConfig.ratios is empty: pass the table from one uncached calibration run")
        if not all(math.isfinite(r) and r > 0 for r in table):
            raise SenCacheError(
                "MagCacheConfig.ratios must all be finite and > 0: recalibrate, the table holds a zero, negative "
                "or NaN entry"
            )
        object.__setattr__(self, "ratios", table)
        if not (_is_number(self.threshold) and self.threshold >= 0):
            raise SenCacheError(f"MagCacheConfig.threshold must be a finite number >= 0, got {self.threshold!r}")
        if not (_is_number(self.max_skip) and int(self.max_skip) == self.max_skip and self.max_skip >= 0):
            raise SenCacheError(f"MagCacheConfig.max_skip must be an integer >= 0, got {self.max_skip!r}")
        object.__setattr__(self, "max_skip", int(self.max_skip))
        if not (_is_number(self.retention_ratio) and 0.0 <= self.retention_ratio <= 1.0):
            raise SenCacheError(f"MagCacheConfig.retention_ratio must be in [0, 1], got {self.retention_ratio!r}")
        if not (_is_number(self.final_steps) and int(self.final_steps) == self.final_steps and self.final_steps >= 0):
            raise SenCacheError(f"MagCacheConfig.final_steps must be an integer >= 0, got {self.final_steps!r}")
        object.__setattr__(self, "final_steps", int(self.final_steps))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class MagCacheState:
    """Per-generation, per-sample state. Accumulators are float64 so threshold crossings are exact."""

    product: torch.Tensor  # (B,) running product P of ratios since the last refresh
    error: torch.Tensor  # (B,) accumulated error E since the last refresh
    skips: torch.Tensor  # (B,) int64, reuses since the last refresh
    cached: torch.Tensor  # (B,) bool, the adapter holds a residual for this sample
    last_step: int = -1
    num_steps: int | None = None

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        return int(self.product.shape[0])

    def to(self, device: torch.device) -> None:
        """The state with its tensors on ``device``."""
        if self.product.device != device:
            self.product = self.product.to(device)
            self.error = self.error.to(device)
            self.skips = self.skips.to(device)
            self.cached = self.cached.to(device)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget the accumulated error of the samples in ``rows`` (they just refreshed)."""
        self.product = torch.where(rows, torch.ones_like(self.product), self.product)
        self.error = torch.where(rows, torch.zeros_like(self.error), self.error)
        self.skips = torch.where(rows, torch.zeros_like(self.skips), self.skips)


class MagCacheRule:
    """The MagCache decision rule. Score = accumulated error E (before any reset); eps = threshold.

    Reasons per sample: "first" (step 0 or nothing cached yet), "retention", "final", "reuse",
    "threshold" (E > threshold), "max_skip" (more than ``max_skip`` reuses in a row).
    """

    name = "magcache"

    def __init__(self, config: MagCacheConfig) -> None:
        if not isinstance(config, MagCacheConfig):
            raise SenCacheError("MagCacheRule needs a MagCacheConfig: MagCacheRule(MagCacheConfig(ratios=...))")
        self.config = config

    def ratio_at(self, step: int, num_steps: int) -> float:
        """The table's ratio for ``step`` of a ``num_steps``-step generation (nearest interpolation)."""
        table = self.config.ratios
        return table[nearest_table_index(step, num_steps, len(table))]

    def new_state(self, batch_size: int) -> MagCacheState:
        """Fresh state for ``batch_size`` samples."""
        if batch_size < 1:
            raise SenCacheError(f"batch_size must be >= 1, got {batch_size}")
        return MagCacheState(
            product=torch.ones(batch_size, dtype=torch.float64),
            error=torch.zeros(batch_size, dtype=torch.float64),
            skips=torch.zeros(batch_size, dtype=torch.int64),
            cached=torch.zeros(batch_size, dtype=torch.bool),
        )

    def decide(self, state: MagCacheState, inp: StepInput) -> Decision:
        """Reuse while the accumulated magnitude-ratio error stays under the threshold (and the skip limit allows)."""
        cfg = self.config
        B = state.batch_size
        check_step_input(state, inp, B)
        state.to(inp.latent.device)
        step, T = inp.step, inp.num_steps

        # The ratio table describes every step, so fold in any step the caller did not decide on.
        gamma = 1.0
        for i in range(state.last_step + 1, step + 1):
            gamma *= self.ratio_at(i, T)
        state.last_step, state.num_steps = step, T

        first = (~state.cached) | (step == 0)
        retention = step < retention_steps(cfg.retention_ratio, T)
        final = in_final_steps(step, T, cfg.final_steps)
        forced = first | retention | final

        product = state.product * gamma
        error = state.error + (1.0 - product).abs()
        skips = state.skips + 1
        within_err = error <= cfg.threshold
        within_skip = skips <= cfg.max_skip
        reuse = within_err & within_skip & ~forced

        score = torch.where(forced, torch.zeros_like(error), error)
        # Reused samples keep the advanced accumulators; every other sample refreshes now.
        state.product = torch.where(reuse, product, torch.ones_like(product))
        state.error = torch.where(reuse, error, torch.zeros_like(error))
        state.skips = torch.where(reuse, skips, torch.zeros_like(skips))

        reasons = []
        for f, r, e, k in zip(first.tolist(), reuse.tolist(), within_err.tolist(), within_skip.tolist()):
            if f:
                reasons.append("first")
            elif retention:
                reasons.append("retention")
            elif final:
                reasons.append("final")
            elif r:
                reasons.append("reuse")
            elif not e:
                reasons.append("threshold")
            else:
                reasons.append("max_skip")
        return Decision(reuse=reuse, score=score.float(), eps=float(cfg.threshold), reason=reasons)

    def observe_refresh(
        self, state: MagCacheState, inp: StepInput, rows: torch.Tensor, residual: torch.Tensor | None
    ) -> None:
        """Mark ``rows`` as holding a fresh residual and restart their accumulators.

        The residual itself is not used: MagCache's decision reads only the calibrated table (use
        :class:`MagCacheCalibration` to build one from residuals). Restarting here as well as in
        ``decide`` keeps the state right when the adapter refreshes a sample the rule wanted to reuse.
        """
        rows = check_rows(rows, state.batch_size).to(state.product.device)
        state.reset_rows(rows)
        state.cached = state.cached | rows


# --------------------------------------------------------------------------------------------------
# Calibration helpers
# --------------------------------------------------------------------------------------------------


def token_norms(residual: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """Per-token L2 norms of a residual, in float32: (B, ..., D) -> (B, N).

    ``feature_dim`` names the dimension holding the features (default last, the (B, S, D) token layout
    of a transformer's block stack). Every other non-batch dimension counts as a token axis and is
    flattened, so (B, F, H, W, D) gives N = F*H*W; for a channels-first tensor such as (B, C, F, H, W)
    pass ``feature_dim=1``. A (B, D) tensor is one token per sample.
    """
    if residual.ndim < 2:
        raise SenCacheError(f"residual must have a batch and a feature dimension, got shape {tuple(residual.shape)}")
    x = residual.detach().float().movedim(feature_dim, -1)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.linalg.vector_norm(x, dim=-1)


def _mean_norm_ratio(norms_now: torch.Tensor, norms_prev: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of norms_now / norms_prev: (B, N), (B, N) -> (B,).

    A zero previous norm is clamped to the smallest float32 so the ratio is huge (MagCache then refreshes)
    rather than NaN; tokens zero at both steps give 0, which also pushes towards a refresh.
    """
    if norms_now.shape != norms_prev.shape:
        raise SenCacheError(f"residual shapes differ between steps: {tuple(norms_now.shape)} vs "
                            f"{tuple(norms_prev.shape)}")
    tiny = torch.finfo(torch.float32).tiny
    return (norms_now / norms_prev.clamp_min(tiny)).mean(dim=-1)


def magnitude_ratio(residual_now: torch.Tensor, residual_prev: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """MagCache's gamma per sample: mean over tokens of ||r_now|| / ||r_prev||, shape (B,), float32.

    Residuals are (B, S, D) with tokens on dim 1 and features last; see :func:`token_norms` for other
    layouts (``feature_dim``).
    """
    return _mean_norm_ratio(token_norms(residual_now, feature_dim), token_norms(residual_prev, feature_dim))


def _smooth(gammas: Sequence[float], smooth_sqrt: bool) -> tuple[float, ...]:
    return tuple(math.sqrt(g) for g in gammas) if smooth_sqrt else tuple(gammas)


def ratios_from_residual_norms(token_norms_per_step: Sequence[torch.Tensor],
                               smooth_sqrt: bool = False) -> tuple[float, ...]:
    """Ratio table from the per-token residual norms of one uncached run, one entry per step.

    Each entry is (N,) or (B, N) per-token L2 norms (see :func:`token_norms`). ``gamma_0 = 1.0``;
    ``gamma_k`` is the per-sample mean token ratio against step k-1, averaged over the batch.
    ``smooth_sqrt`` replaces every gamma by sqrt(gamma), halving its log-distance from 1, the paper's
    optional smoothing of a one-prompt calibration.
    """
    norms = [n.detach().float().reshape(1, -1) if n.ndim <= 1 else n.detach().float() for n in token_norms_per_step]
    if not norms:
        raise SenCacheError("no residual norms given: pass one tensor per denoising step of an uncached run")
    gammas = [1.0]
    for prev, now in zip(norms[:-1], norms[1:]):
        gammas.append(float(_mean_norm_ratio(now, prev).mean()))
    return _smooth(gammas, smooth_sqrt)


@dataclass
class MagCacheCalibration:
    """Accumulates a ratio table while an uncached generation runs.

    Call :meth:`observe` with the block-stack residual (conditional branch) once per step, in order; it
    keeps only the previous step's per-token norms. Then :meth:`ratios` or :meth:`to_config`.
    """

    feature_dim: int = -1
    per_sample: list[torch.Tensor] = field(default_factory=list)  # one (B,) gamma tensor per step
    _prev_norms: torch.Tensor | None = field(default=None, init=False, repr=False)

    def observe(self, residual: torch.Tensor) -> None:
        """Record one step's residual norms."""
        norms = token_norms(residual, self.feature_dim).cpu()
        if self._prev_norms is None:
            self.per_sample.append(torch.ones(norms.shape[0]))
        else:
            self.per_sample.append(_mean_norm_ratio(norms, self._prev_norms))
        self._prev_norms = norms

    @property
    def num_steps(self) -> int:
        """Steps recorded so far."""
        return len(self.per_sample)

    def ratios(self, smooth_sqrt: bool = False) -> tuple[float, ...]:
        """The table (batch mean per step), gamma_0 = 1.0, optionally sqrt-smoothed."""
        if not self.per_sample:
            raise SenCacheError("MagCacheCalibration saw no residuals: "
                                "run one uncached generation through observe() first")
        return _smooth([float(g.mean()) for g in self.per_sample], smooth_sqrt)

    def to_config(self, smooth_sqrt: bool = False, **kwargs) -> MagCacheConfig:
        """A :class:`MagCacheConfig` holding this table; other settings pass through ``kwargs``."""
        return MagCacheConfig(ratios=self.ratios(smooth_sqrt), **kwargs)

    def reset(self) -> None:
        """Forget everything recorded."""
        self.per_sample = []
        self._prev_norms = None
