"""The live cache of one transformer, as a user holds it: what :func:`sencache.enable` returns.

A :class:`CacheSession` puts the pieces together and answers a user's questions (the trace, the summary, what is
cached and where); the work is split by responsibility: the step clock (:mod:`~sencache.adapter.step_clock`), the
call protocol the hooks drive (:mod:`~sencache.adapter.call_protocol`), the per-branch residual store
(:mod:`~sencache.adapter.residual_store`), the trace recorder (:mod:`~sencache.adapter.trace_recorder`) and, under
context parallelism, the rank guard (:mod:`~sencache.adapter.rank_guard`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sencache.adapter.call_protocol import CallProtocol
from sencache.adapter.layout import find_block_stack
from sencache.adapter.observers import SessionObserver
from sencache.adapter.parallel import DecisionSync
from sencache.adapter.plan import StackPlan
from sencache.adapter.step_clock import StepClock
from sencache.adapter.trace import Trace
from sencache.adapter.trace_recorder import TraceRecorder
from sencache.errors import SenCacheError


class CacheSession:
    """What :func:`sencache.enable` returns: the live cache of one transformer, with the trace of its last call.

    Args:
        transformer: the hooked transformer, or the pipeline's denoising transformers by name (Wan 2.2:
            ``{"transformer": high_noise, "transformer_2": low_noise}``): one step count, rule and trace for all;
            each expert has its own block stack and starts with an empty cache when it takes over.
        scheduler: the pipeline's scheduler (for the step index).
        config: the rule's config (``build_rule()``).
        num_inference_steps: T for a bare transformer without a scheduler.
        sync: rank-consistent decisions under context parallelism, or None.
        offload_residuals: keep cached residuals in (pinned) host memory.
        observers: told of every transformer call (:class:`~sencache.adapter.observers.CallEvent`).
        remove: takes the hooks off (what :meth:`disable` calls).

    Public state: ``trace`` (the last generation's decisions), ``observers``, ``stacks`` (each expert's block
    stack; ``stack`` the first's), ``method``, ``calls`` (the call protocol the hooks drive); :meth:`summary`,
    :meth:`residuals`, :meth:`residual_bytes`, :meth:`cache_state`.
    """

    def __init__(self, transformer, scheduler, config, num_inference_steps: int | None = None,
                 sync: DecisionSync | None = None, offload_residuals: bool = False,
                 observers: Sequence[SessionObserver] = (), remove: Callable[[], None] | None = None):
        self.transformers = dict(transformer) if isinstance(transformer, dict) else {"transformer": transformer}
        self.transformer = next(iter(self.transformers.values()))
        self.stacks = {name: find_block_stack(module) for name, module in self.transformers.items()}
        self.stack = next(iter(self.stacks.values()))
        self.scheduler, self.config, self.sync = scheduler, config, sync
        self.rule = config.build_rule()
        self.method = getattr(self.rule, "name", type(self.rule).__name__)
        self.num_inference_steps = num_inference_steps
        self.offload_residuals = bool(offload_residuals)
        self.trace = Trace(method=self.method)
        self.plan = StackPlan()  # what the block hooks do in the current call (see sencache.adapter.plan)
        # TeaCache watches the first block's modulation, so its decision waits for that block
        self.plan.decide_at_head = bool(getattr(self.rule, "reads_modulation", False))
        # the paper's SeaCache watches the first block's modulated input: decided at that block's first attention
        self.plan.decide_in_attention = bool(getattr(self.rule, "reads_attention_input", False))
        self.reads_grid = bool(getattr(self.rule, "reads_grid", False)) or self.plan.decide_in_attention
        recorder = TraceRecorder(self.trace, self.method, final_steps=getattr(config, "final_steps", 0))
        self.calls = CallProtocol(self.rule, StepClock(scheduler, num_inference_steps), recorder, self.plan,
                                  transformers=self.transformers, profile=getattr(config, "profile", None),
                                  sync=sync, offload_residuals=offload_residuals, observers=list(observers))
        self._remove = remove

    @property
    def observers(self) -> list[SessionObserver]:
        """Told of every transformer call (append to add one)."""
        return self.calls.observers

    @observers.setter
    def observers(self, value: Sequence[SessionObserver]) -> None:
        self.calls.observers = list(value)

    def __deepcopy__(self, memo):
        # a copy would share the hooks' view of one pipeline and the cached residuals of another
        raise SenCacheError("a pipeline (or transformer) with a sencache cache cannot be deep-copied: call "
                            "sencache.disable(pipe) first, copy it, then sencache.enable(...) on each copy")

    def summary(self) -> dict:
        """The trace summary of the last generation: calls, computed, reused, nfe, skipped steps, notes."""
        return self.trace.summary()

    def reset(self) -> None:
        """Forget all cached state; the next transformer call starts a new generation."""
        self.calls.reset()

    def disable(self) -> None:
        """Remove this cache's hooks from the transformer (same as ``sencache.disable(pipe)``)."""
        if self._remove is None:
            raise SenCacheError("this session was not made by sencache.enable; call sencache.disable(pipe)")
        self._remove()

    def residuals(self) -> dict[str, torch.Tensor]:
        """The cached video-stream residual per branch (B, ...), wherever it lives; read-only use."""
        return dict(self.calls.gen.store.residual)

    def cache_state(self) -> dict:
        """Everything the session holds for the current generation, for memory accounting: ``residual``,
        ``encoder_residual`` and ``has_residual`` (dicts per branch), ``rule_state`` and ``reuse_run``."""
        gen = self.calls.gen
        return {"residual": dict(gen.store.residual), "encoder_residual": dict(gen.store.encoder_residual),
                "has_residual": dict(gen.store.has_residual), "rule_state": gen.rule_state,
                "reuse_run": gen.reuse_run}

    def residual_bytes(self) -> dict[str, int]:
        """Bytes of cached residuals held per branch (video and text streams), wherever they live."""
        return self.calls.gen.store.nbytes()

    def residual_devices(self) -> dict[str, str]:
        """Where each branch's cached video-stream residual lives ("cpu", "cuda:0", ...)."""
        return {branch: str(value.device) for branch, value in self.calls.gen.store.residual.items()}
