"""What the adapter tells the outside about each transformer call: the one public window on a session.

Code outside the adapter never reads a :class:`~sencache.adapter.session.CacheSession`'s internals; it
registers a :class:`SessionObserver` (``sencache.enable(pipe, config, observers=[...])`` or
``session.observers.append(...)``) and receives one :class:`CallEvent` at the end of every transformer call.
Recording uncached runs (:mod:`sencache.adapter.recorder`) and the audit's real-forward probe
(:mod:`sencache.harness.audit`) are built on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from sencache.adapter.trace import TraceRecord


@dataclass
class CallEvent:
    """One transformer call as the adapter saw it.

    Args:
        call: index of the call within the generation (0, 1, ...).
        step: 0-based denoising step; ``num_steps`` is T of this generation.
        branch: the pipeline's cache context ("cond", "uncond", "cond_uncond") or "default".
        decider: True for the call that asked the rule for this step's decision (the step's first call).
        timestep: (B,) float32, the timestep per sample in the transformer's units.
        latent: (B, ...) the noisy latent the transformer received (not a copy: clone what you keep).
        modulation: (B, ...) the first block's timestep conditioning (``temb``), or None if it takes none.
        computed: (B,) bool, True where the block stack ran for that sample.
        residual: (R, ...) the new block-stack residual of the R computed rows (in row order), or None.
        records: the trace rows this call added (one per sample).
        module, args, kwargs, output: the transformer and its call, e.g. to re-run the real forward
            with ``type(module).forward(module, *args, **kwargs)`` (which bypasses every cache hook).
        expert: which of the pipeline's denoising transformers ran ("transformer"; Wan 2.2 also "transformer_2").
    """

    call: int
    step: int
    num_steps: int
    branch: str
    decider: bool
    timestep: torch.Tensor
    latent: torch.Tensor
    modulation: torch.Tensor | None
    computed: torch.Tensor
    residual: torch.Tensor | None
    records: list[TraceRecord] = field(default_factory=list)
    module: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    output: Any = None
    expert: str = "transformer"


class SessionObserver(Protocol):
    """Anything with ``on_call(event)``; called at the end of every transformer call of the session."""

    def on_call(self, event: CallEvent) -> None:
        """Called with the :class:`CallEvent` of each transformer call."""


class CallbackObserver:
    """A :class:`SessionObserver` from a plain function ``fn(event)``."""

    def __init__(self, fn: Callable[[CallEvent], None]):
        self.fn = fn

    def on_call(self, event: CallEvent) -> None:
        """Hand the event to the function."""
        self.fn(event)
