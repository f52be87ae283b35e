"""The one recorder of uncached runs: a generation through the adapter with a rule that never reuses.

Calibration steps that need what happens *inside* an uncached generation — the baselines' magnitude
ratios and modulation changes (:mod:`sencache.calibration.baselines`), the per-sample correction's
normaliser (:mod:`sencache.calibration.correction`) — run it and reduce each
:class:`~sencache.adapter.observers.CallEvent` as it comes (a real model's residuals are far too large
to keep for every call):

    def keep(event):  # every transformer call; event.residual is the block-stack residual
        norms.append(event.residual.float().norm())
    record_uncached(pipe, lambda: generate(pipe, prompt, seed), keep)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from sencache.adapter.hooks import disable, enable, quiet_sencache
from sencache.adapter.observers import CallbackObserver, CallEvent
from sencache.core.rules.base import Decision, StepInput

T = TypeVar("T")


class NeverReuseRule:
    """Computes every step; a recording is an uncached run seen through the adapter."""

    name = "record"

    def new_state(self, batch_size: int) -> int:
        """The batch size is all the state there is."""
        return batch_size

    def decide(self, state: int, inp: StepInput) -> Decision:
        """Compute every sample."""
        return Decision(reuse=torch.zeros(state, dtype=torch.bool), score=None, eps=math.nan,
                        reason=["record"] * state)

    def observe_refresh(self, state, inp, rows, residual) -> None:
        """Nothing to learn."""
        return None


@dataclass(frozen=True)
class NeverReuseConfig:
    """Config of :class:`NeverReuseRule` (for :func:`sencache.enable`)."""

    def build_rule(self) -> NeverReuseRule:
        """A fresh :class:`NeverReuseRule`."""
        return NeverReuseRule()


def record_uncached(pipe, run: Callable[[], T], on_call: Callable[[CallEvent], None]) -> T:
    """Run ``run()`` (one or more generations on ``pipe``) uncached, calling ``on_call(event)`` after every
    transformer call; returns what ``run`` returned. The cache hooks are removed afterwards, whatever happens.

    Args:
        pipe: a diffusers pipeline (or transformer) that :func:`sencache.enable` accepts.
        run: the generation(s) to record, e.g. ``lambda: generate(pipe, prompt, seed)``.
        on_call: receives each :class:`~sencache.adapter.observers.CallEvent`; its tensors are live, so
            reduce or clone what you keep.
    """
    enable(pipe, NeverReuseConfig(), observers=[CallbackObserver(on_call)])
    try:
        with quiet_sencache():  # a recording never reuses: the "no speed-up" warning is expected
            return run()
    finally:
        disable(pipe)
