"""What every caching method is: a named threshold to vary, what it needs, and how it goes on a pipeline.

**Accounting.** Every handle carries a :class:`~sencache.methods.counter.StepCounter`, made of plain torch hooks
that no cache touches: a forward pre-hook on the transformer cuts the calls into denoising steps (a new step when
the timestep changes), and a forward pre-hook on the first ``nn.Linear`` inside the *last* block counts the calls
in which the block stack really ran (a cache that skips the stack never reaches it; TaylorSeer's predicted blocks
and FirstBlockCache's always-run first block do not count). From that:

* ``calls`` — transformer calls (2 per step with classifier-free guidance), ``computed`` — calls in which the
  block stack ran, ``steps`` — denoising steps;
* ``nfe`` — block-stack runs in full-step units: ``computed / (calls / steps)``. For caches that decide once
  per step for both CFG branches (ours, MagCache, TaylorSeer, DBCache) it is the number of computed steps; a
  cache that decides per branch (FirstBlockCache, SeaCache) can give a fraction;
* ``schedule`` — per step, whether the stack ran in the step's first call (the cond branch, sample 0);
  ``skipped_steps`` — steps in which it ran in no call.

For our methods ``stats()["trace"]`` also holds the adapter's own trace summary, which must agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from sencache.adapter.layout import denoisers, find_block_stack
from sencache.core.default_rule import SCHEDULE, rule_for_profile
from sencache.errors import SenCacheError
from sencache.methods.counter import StepCounter
from sencache.methods.optional import cache_dit_available

REFERENCE = "none"

# what a comparison records as "skipped" when missing (an optional package or something of the model's); a missing
# profile or baselines is the user's to supply
SKIPPABLE_NEEDS = frozenset({"cache_dit", "two_blocks", "sea_adapter"})


@dataclass
class MethodContext:
    """What a method may need besides its threshold: step count, SenCache profile, calibrated baselines."""

    num_inference_steps: int = 50
    profile: Any = None  # SensitivityProfile
    baselines: Any = None  # sencache.calibration.baselines.Baselines
    # sencache only: which of its rules runs (sencache.core.default_rule.RULES), as budget mode picks it per model
    # family and budget; None is the rule an ε alone gets (the ε-schedule rule)
    rule: str | None = None


def default_rule_for(ctx: MethodContext, target_nfe: float) -> str:
    """The rule ``sencache`` runs at ``target_nfe`` (see :mod:`sencache.core.default_rule`)."""
    if ctx.profile is None:
        return SCHEDULE
    return rule_for_profile(ctx.profile, target_nfe, ctx.num_inference_steps)


def final_step_count(num_inference_steps: int) -> int:
    """Steps the "-final" controls always compute: the last 10 % (at least 1)."""
    return max(1, int(round(0.1 * num_inference_steps)))


class MethodHandle:
    """A method applied to one pipeline. ``stats()`` describes the last generation; ``remove()`` undoes it."""

    def __init__(self, name: str, value, setting: dict, pipe, counter: StepCounter | None,
                 undo: Callable[[], None], extra: Callable[[], dict] | None = None):
        self.name, self.value, self.setting, self.pipe = name, value, setting, pipe
        self.counter = counter
        self._undo, self._extra = undo, extra
        self.removed = False

    def reset(self) -> None:
        """Forget the counted calls."""
        if self.counter is not None:
            self.counter.reset()

    def stats(self) -> dict:
        """The counter's accounting of the last generation, and what the method itself reports (``trace``)."""
        out = self.counter.stats() if self.counter is not None else {}
        if self._extra is not None:
            out.update(self._extra())
        return out

    def remove(self) -> None:
        """Take the cache (and the counter) off the pipeline; a second call does nothing."""
        if self.removed:
            return
        self.removed = True
        try:
            self._undo()
        finally:
            if self.counter is not None:
                self.counter.remove()

    def __enter__(self) -> "MethodHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _lacks_cache_dit(method, ctx, pipe) -> str | None:
    return None if cache_dit_available() else "skipped: cache-dit not installed"


def _lacks_profile(method, ctx, pipe) -> str | None:
    return "skipped: no sensitivity profile (run `sencache calibrate`)" if ctx.profile is None else None


def _lacks_loop(method, ctx, pipe) -> str | None:
    if ctx.profile is not None and "gain" not in ctx.profile.curves:
        return "skipped: the profile has no closed-loop calibration (run `sencache calibrate` again)"
    return None


def _lacks_baselines(method, ctx, pipe) -> str | None:
    return "skipped: no calibrated baselines (baselines.json)" if ctx.baselines is None else None


def _lacks_diffusers_ratios(method, ctx, pipe) -> str | None:
    if ctx.baselines is not None and not ctx.baselines.diffusers_magcache_ratios:
        return "skipped: baselines hold no diffusers MagCache ratios (recalibrate)"
    return None


def _has_two_experts(method, ctx, pipe) -> str | None:
    if pipe is not None and len(denoisers(pipe)) > 1:
        return f"skipped: {method.name} has one ratio table per pipeline, and this one has two experts"
    return None


def _has_one_block(method, ctx, pipe) -> str | None:
    if pipe is not None and len(find_block_stack(pipe.transformer).blocks) < 2:
        return f"skipped: {method.name} needs at least 2 transformer blocks"
    return None


# each need a method may declare, and how to tell it is not met (checked in this order)
NEED_CHECKS: dict[str, Callable] = {
    "cache_dit": _lacks_cache_dit, "profile": _lacks_profile, "loop": _lacks_loop, "baselines": _lacks_baselines,
    "diffusers_ratios": _lacks_diffusers_ratios, "one_expert": _has_two_experts, "two_blocks": _has_one_block,
}


class CacheMethod:
    """One caching method: its threshold (``param``, ``default``, ``sweep``), what it ``needs``, and how it is put on a
    pipeline (:meth:`attach`, given by each family). ``family``: reference, ours, diffusers or cache-dit."""

    family = "ours"

    def __init__(self, name: str, description: str, param: str | None, default, sweep=(), *, needs=(),
                 integer: bool = False, budget_aware: bool = False):
        self.name, self.description, self.param, self.default = name, description, param, default
        self.sweep, self.needs, self.integer = tuple(sweep), tuple(needs), integer
        self.higher_is_faster = True  # a larger threshold reuses more (every method here)
        self.budget_aware = budget_aware  # its rule depends on the target NFE (MethodContext.rule)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def coerce(self, value):
        """``value`` (or the default) as this method's threshold type, refused when out of range."""
        if value is None:
            value = self.default
        if self.param is None:
            return None
        if self.integer:
            if float(value) != int(value) or int(value) < 1:
                raise SenCacheError(f"{self.name}: {self.param} must be an integer >= 1, got {value!r}")
            return int(value)
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise SenCacheError(f"{self.name}: {self.param} must be a finite number >= 0, got {value!r}")
        return value

    @property
    def skipped_when_unavailable(self) -> bool:
        """Whether a comparison records this method as skipped when it cannot run: what it lacks then is an optional
        package or something of the model's, a result; a missing profile or baselines is the user's to supply."""
        return bool(SKIPPABLE_NEEDS & set(self.needs))

    def unavailable(self, ctx: MethodContext | None = None, pipe=None) -> str | None:
        """Why this method cannot run here ("skipped: ..."), or None."""
        ctx = ctx or MethodContext()
        for need, lacks in NEED_CHECKS.items():
            reason = lacks(self, ctx, pipe) if need in self.needs else None
            if reason is not None:
                return reason
        return self.model_unsupported(pipe) if pipe is not None else None

    def model_unsupported(self, pipe) -> str | None:
        """Why this method cannot run on ``pipe``'s model ("skipped: ..."), or None (every model by default)."""
        return None

    def details(self, value, ctx: MethodContext) -> dict:
        """What results record of this method's setting beside its threshold."""
        return {}

    def setting(self, value=None, ctx: MethodContext | None = None) -> dict:
        """The full, JSON-able setting of this method at ``value`` (what results record)."""
        ctx = ctx or MethodContext()
        value = self.coerce(value)
        out = {"method": self.name, "family": self.family}
        if self.param is not None:
            out[self.param] = value
        out.update(self.details(value, ctx))
        return out

    def setting_id(self, value=None) -> str:
        """A short name of the setting: ``"eps=0.1"``, or the method's name when it has no threshold."""
        value = self.coerce(value)
        return self.name if self.param is None else f"{self.param}={value:g}"

    def attach(self, pipe, value, ctx: MethodContext) -> tuple[Callable[[], None], Callable[[], dict] | None]:
        """Put the cache on ``pipe``: returns (undo, extra stats or None)."""
        raise NotImplementedError

    def apply(self, pipe, value=None, ctx: MethodContext | None = None, count: bool = True) -> MethodHandle:
        """Put this method on ``pipe``; returns the handle (remove it before applying another method). ``count``:
        also count the work really done (:class:`~sencache.methods.counter.StepCounter`)."""
        ctx = ctx or MethodContext()
        reason = self.unavailable(ctx, pipe)
        if reason is not None:
            raise SenCacheError(f"{self.name} cannot run: {reason.removeprefix('skipped: ')}")
        value = self.coerce(value)
        setting = self.setting(value, ctx)
        counter = StepCounter(pipe) if count else None
        try:
            undo, extra = self.attach(pipe, value, ctx)
        except BaseException:
            if counter is not None:
                counter.remove()
            raise
        return MethodHandle(self.name, value, setting, pipe, counter, undo, extra)


class NoCache(CacheMethod):
    """No cache hooks at all: the reference every cache is measured against."""

    family = "reference"

    def __init__(self):
        super().__init__(REFERENCE, "no cache: every step runs the whole block stack", None, None)

    def attach(self, pipe, value, ctx: MethodContext):
        """Nothing to put on."""
        return (lambda: None), None
