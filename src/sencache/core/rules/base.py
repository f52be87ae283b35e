"""The contract every caching rule follows.

A rule is pure: tensors and numbers in, a decision out. It knows nothing of diffusers or modules.
The adapter (``sencache.adapter.hooks``) calls ``decide`` once per denoising step (on the first transformer
call of the step; the other CFG branches of that step follow the same decision) and
``observe_refresh`` after the block stack really ran, so that rules which learn from real outputs
(MagCache ratios, TeaCache accumulators, SenCache references) can update their per-sample state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from sencache.core.change import rms_per_sample


@dataclass
class StepInput:
    """What the adapter observes at one denoising step, for a batch of B samples.

    Args:
        step: 0-based index of the denoising step; ``num_steps`` is T.
        timestep: (B,) float, in the units the transformer receives (0–1000 for Wan's schedulers).
        latent: (B, ...) the transformer's noisy input.
        modulation: (B, ...) the timestep conditioning fed to the first block (``temb``), or None.
        rms: per-sample RMS to measure changes with (across all ranks under context parallelism).
        grid: (B, F, H, W, C) the signal of a rule that filters over the video grid (SeaCache: the noisy latent,
            or the first block's modulated input), given only to rules that ask for it; else None.
        sigma: the step's noise level in [0, 1] (flow-matching units), given with ``grid``.
    """

    step: int  # 0-based index of the denoising step
    num_steps: int  # T, total steps of this generation
    timestep: torch.Tensor  # (B,) float, in the units the transformer receives
    latent: torch.Tensor  # (B, ...) the transformer's noisy input
    modulation: torch.Tensor | None = None  # (B, ...) timestep conditioning fed to the first block
    # (B, ...) -> (B,) root-mean-square per sample. Under context parallelism each rank holds a slice of
    # the latent; the adapter then passes a reducer that sums squares and element counts over the ranks
    # (sencache.adapter.parallel), so rules stay free of torch.distributed and see the RMS of the whole latent.
    rms: Callable[[torch.Tensor], torch.Tensor] = rms_per_sample
    grid: torch.Tensor | None = None  # (B, F, H, W, C), for rules with reads_grid / reads_attention_input
    sigma: float | None = None  # noise level in [0, 1], given with grid


@dataclass
class Decision:
    """Per-sample verdict for one step. ``reuse[i]`` True means sample i skips the block stack.

    Args:
        reuse: (B,) bool; the adapter moves it to the CPU, where all decision state lives.
        score: (B,) float, the rule's own error estimate in its units (SenCache: RMS output units), or None.
        eps: the threshold the score was compared with at this step.
        reason: per-sample reasons for the trace ("first", "final", "reuse", "above_eps", "max_reuse", ...).
        order: (B,) int, 0 = hold the cached residual, 1 = extrapolate it linearly in t; None = hold all.
        predicted: (B,) float, the clip error (frame RMS, frames in [0, 1]) the sample's reuses so far predict, for
            rules that predict it (the closed-loop SenCache); None otherwise.
    """

    reuse: torch.Tensor  # (B,) bool
    score: torch.Tensor | None  # (B,) float, the rule's own error estimate (None if it has none)
    eps: float  # the threshold the score was compared with at this step
    reason: list[str] | None = None  # optional per-sample reason ("first", "final", "max_reuse", ...)
    # (B,) int, what a reusing sample gets: 0 the cached residual held (the paper), 1 the residual extrapolated
    # linearly in the timestep from the sample's last two refreshes. None: hold for every sample.
    order: torch.Tensor | None = None
    predicted: torch.Tensor | None = None  # (B,) predicted clip error of the reuses so far (closed-loop rules)


class Rule(Protocol):
    """What the adapter needs from a caching rule: fresh state, a decision per step, news of refreshes.

    A rule may set ``reads_modulation = True`` when it watches the first block's ``temb``: the adapter then
    decides inside that block (a graph break under torch.compile) instead of before the transformer runs.
    ``reads_grid = True`` asks for the noisy latent on its video grid (``StepInput.grid``, with ``sigma``);
    ``reads_attention_input = True`` for the first block's modulated input (what its first attention layer gets)
    on the token grid instead, decided inside that block. ``forecast_clock = "step"`` makes order-1 forecasts
    extrapolate in the step index instead of the timestep.
    """
    name: str

    def new_state(self, batch_size: int) -> Any:
        """Fresh per-generation state for ``batch_size`` samples."""

    def decide(self, state: Any, inp: StepInput) -> Decision:
        """Decide reuse/refresh for every sample at this step. Must not mutate tensors in ``inp``."""

    def observe_refresh(self, state: Any, inp: StepInput, rows: torch.Tensor, residual: torch.Tensor | None) -> None:
        """The block stack ran for the samples where ``rows`` (B,) is True; ``residual`` holds their new
        block-stack residual (rows selected, shape (R, ...)) of the conditional branch, or None."""


def in_final_steps(step: int, num_steps: int, final_steps: int) -> bool:
    """True when ``step`` is one of the last ``final_steps`` of ``num_steps`` (which always compute)."""
    return final_steps > 0 and step >= num_steps - final_steps
