"""An accounting of the work a cache really does, that no cache can hide from.

:class:`StepCounter` uses plain torch forward pre-hooks only: one on the transformer cuts the calls into
denoising steps (a new step when the timestep changes), one on the first ``nn.Linear`` inside the *last*
block counts the calls in which the block stack really ran. From that: ``calls``, ``computed``, ``steps``
and ``nfe`` = computed / (calls / steps), the block-stack runs in full-step units.
"""

from __future__ import annotations

import torch

from sencache.adapter.layout import denoisers, find_block_stack
from sencache.errors import SenCacheError

# --------------------------------------------------------------------------------------------------
# The independent counter
# --------------------------------------------------------------------------------------------------


def _probe_module(transformer: torch.nn.Module) -> torch.nn.Module:
    """The first nn.Linear inside the last block: it runs only when that block's real forward runs."""

    last = find_block_stack(transformer).blocks[-1]
    for module in last.modules():
        if isinstance(module, torch.nn.Linear):
            return module
    raise SenCacheError(f"the last block of {type(transformer).__name__} has no linear layer to count runs with")


def _timestep_value(args, kwargs) -> float | None:
    t = kwargs.get("timestep")
    if t is None and len(args) > 1:
        t = args[1]
    if isinstance(t, torch.Tensor) and t.numel() > 0:
        return float(t.max())  # per-token timesteps (image-to-video): the conditioning frame's tokens have 0
    if isinstance(t, (int, float)):
        return float(t)
    return None


class StepCounter:
    """Counts real block-stack runs per transformer call and groups the calls into denoising steps.

    A new generation starts when the timestep goes up (samplers run from high t to low t) or on
    :meth:`reset`. Only plain ``register_forward_pre_hook`` hooks are used, so no cache can hide from it.
    ``target`` is a pipeline (every denoising transformer is counted: Wan 2.2's two experts) or a transformer.
    """

    def __init__(self, target):
        self.transformers = list(denoisers(target).values())
        self.steps: list[list[bool]] = []  # per step, per call: did the block stack run
        self._last_t: float | None = None
        self._handles = []
        for transformer in self.transformers:
            self._handles += [transformer.register_forward_pre_hook(self._on_call, with_kwargs=True),
                              _probe_module(transformer).register_forward_pre_hook(self._on_block)]

    def _on_call(self, module, args, kwargs):
        t = _timestep_value(args, kwargs)
        if self.steps and t is not None and self._last_t is not None and t > self._last_t + 1e-6:
            self.steps = []  # the timestep went up: a new generation
        if not self.steps or t is None or t != self._last_t:
            self.steps.append([])
        self.steps[-1].append(False)
        self._last_t = t

    def _on_block(self, module, args):
        if self.steps and self.steps[-1]:
            self.steps[-1][-1] = True

    def reset(self) -> None:
        """Forget the counted calls (the next call starts a new generation)."""
        self.steps, self._last_t = [], None

    def stats(self) -> dict:
        """What the last generation really computed: nfe, computed, calls, steps, skipped steps, schedule."""
        steps = len(self.steps)
        calls = sum(len(s) for s in self.steps)
        computed = sum(sum(s) for s in self.steps)
        nfe = computed * steps / calls if calls else 0.0
        nfe = int(round(nfe)) if abs(nfe - round(nfe)) < 1e-9 else round(nfe, 3)
        return {
            "nfe": nfe,
            "computed": computed,
            "calls": calls,
            "steps": steps,
            "skipped_steps": [i for i, s in enumerate(self.steps) if not any(s)],
            "schedule": [bool(s[0]) for s in self.steps],
            "computed_per_step": [int(sum(s)) for s in self.steps],
        }

    def remove(self) -> None:
        """Take the counting hooks off."""
        for h in self._handles:
            h.remove()
        self._handles = []
