"""The state of one generation and of the transformer call in progress, as the call protocol keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sencache.adapter.residual_store import ResidualStore
from sencache.core.rules.base import Decision, StepInput


@dataclass
class CallState:
    """One transformer call: what it was given and what the step's decision makes of it."""
    branch: str
    step: int
    num_steps: int
    latent: torch.Tensor
    timestep: torch.Tensor  # (B,) float
    compute: torch.Tensor | None = None  # (B,) bool, rows whose block stack runs
    reasons: list[str] | None = None
    modulation: torch.Tensor | None = None  # the first block's temb, for observers
    t_cpu: torch.Tensor | None = None  # (B,) float64 timestep on the CPU (decisions and forecasts live there)
    decider: bool = False  # this call asked the rule for the step's decision
    residual: torch.Tensor | None = None  # new block-stack residual of the computed rows, for observers
    grid: torch.Tensor | None = None  # (B, F, H, W, C) the rule's grid signal (rules with reads_grid)
    sigma: float | None = None  # the step's noise level, given with grid


@dataclass
class GenerationState:
    """One generation: the rule's state, the step in progress and its decision, the cached residuals."""
    rule_state: Any = None
    num_steps: int | None = None
    batch: int | None = None
    step: int | None = None
    branches_this_step: set = field(default_factory=set)
    decision: Decision | None = None
    step_input: StepInput | None = None
    decider_branch: str | None = None
    reuse_run: torch.Tensor | None = None  # (B,) consecutive reuse verdicts, for the trace
    store: ResidualStore = field(default_factory=lambda: ResidualStore(0))
    expert: str = "transformer"  # the denoising transformer serving this generation's current steps

    def switched_to(self, expert: str, rule_state, store: ResidualStore) -> "GenerationState":
        """The same generation (step count, step in progress) with an empty cache for another expert: one expert's
        residuals mean nothing to the other, so the new expert's first step computes."""
        return GenerationState(rule_state=rule_state, num_steps=self.num_steps, batch=self.batch, step=self.step,
                               branches_this_step=self.branches_this_step, store=store, expert=expert)
