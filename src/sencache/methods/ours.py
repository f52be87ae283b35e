"""Our methods, all through :func:`sencache.enable`: SenCache (its rules), MagCache, TeaCache, SeaCache, fixed
intervals. Each builds its rule config at a threshold and records the settings it ran with."""

from __future__ import annotations

from sencache.adapter import hooks
from sencache.core.default_rule import LOOP_AUTO, LOOP_HOLD, RULES, SCHEDULE
from sencache.core.rules import FixedConfig, MagCacheConfig, SeaCacheConfig, SenCacheConfig, TeaCacheConfig
from sencache.core.schedule import DEFAULT_EPS_SCHEDULE
from sencache.errors import SenCacheError
from sencache.methods.base import CacheMethod, MethodContext, final_step_count

SENCACHE_MAX_REUSE = 3
SENCACHE_FINAL_STEPS = 1
MAGCACHE_MAX_SKIP = 2  # the paper's "slow" Wan setting
MAGCACHE_RETENTION = 0.2
# With K = 2 and 20 % retention MagCache computes at least ~24 of 50 steps; "magcache-fast" loosens both so
# it can reach the budgets below that (15 of 50: 5 retained steps + one compute per 7 of the other 45).
MAGCACHE_FAST_MAX_SKIP = 6
MAGCACHE_FAST_RETENTION = 0.1
TEACACHE_ORDER = 1
TEACACHE_FINAL_STEPS = 1


class OursMethod(CacheMethod):
    """A method whose rule runs in our adapter: :meth:`config` builds the rule config at a threshold."""

    family = "ours"

    def config(self, value, ctx: MethodContext):
        """The sencache-adapter config at ``value``."""
        raise NotImplementedError

    def attach(self, pipe, value, ctx: MethodContext):
        """``sencache.enable`` with :meth:`config`; the extra stats are the adapter's trace summary and schedule."""
        session = hooks.enable(pipe, self.config(value, ctx))

        def extra() -> dict:
            records = session.trace.records
            steps = sorted({r.step for r in records})
            computed = {r.step for r in records if r.sample == 0 and r.computed}
            return {"trace": session.summary(), "trace_schedule": [s in computed for s in steps]}

        return (lambda: hooks.disable(pipe)), extra


class SenCacheMethod(OursMethod):
    """SenCache with one of its rules: ``rule`` fixed (the loops), the paper's rule, or the context's (the default
    method, whose rule budget mode picks per model family and budget)."""

    def __init__(self, name: str, description: str, default, sweep, *, rule: str | None = None, paper: bool = False,
                 needs=("profile",), budget_aware: bool = False):
        super().__init__(name, description, "eps", default, sweep, needs=needs, budget_aware=budget_aware)
        self.rule, self.paper = rule, paper

    def config(self, value, ctx: MethodContext) -> SenCacheConfig:
        """The SenCache config of this method's rule at ε = ``value``."""
        if self.paper:
            return SenCacheConfig.paper(ctx.profile, eps=float(value))
        rule = self.rule or ctx.rule or SCHEDULE
        if rule not in RULES:
            raise SenCacheError(f"unknown SenCache rule {rule!r}; choose from {', '.join(RULES)}")
        if rule == SCHEDULE:
            return SenCacheConfig(ctx.profile, eps=float(value), max_reuse=SENCACHE_MAX_REUSE,
                                  final_steps=SENCACHE_FINAL_STEPS, eps_schedule=DEFAULT_EPS_SCHEDULE, loop=False)
        return SenCacheConfig(ctx.profile, eps=float(value), max_reuse=SENCACHE_MAX_REUSE,  # the closed loop
                              final_steps=SENCACHE_FINAL_STEPS, loop=True,
                              forecast="auto" if rule == LOOP_AUTO else "hold")

    def details(self, value, ctx: MethodContext) -> dict:
        """The rule and its settings, and which profile they came from."""
        c = self.config(value, ctx) if ctx.profile is not None else None
        if c is not None and c.loop:
            cfg = {"rule": LOOP_AUTO if c.forecast == "auto" else LOOP_HOLD, "max_reuse": c.max_reuse,
                   "final_steps": c.final_steps, "learn_momentum": c.learn_momentum,
                   "combine": ctx.profile.metadata["loop"]["combine"]}
        elif c is not None:
            cfg = {"rule": SCHEDULE, "eps_start": c.eps_start, "warmup_fraction": c.warmup_fraction,
                   "max_reuse": c.max_reuse, "final_steps": c.final_steps,
                   "eps_schedule": c.eps_schedule.name if c.eps_schedule else None, "forecast": c.forecast}
        else:
            cfg = {"eps_start": float(value) / 10, "warmup_fraction": 0.2, "max_reuse": SENCACHE_MAX_REUSE,
                   "final_steps": SENCACHE_FINAL_STEPS, "eps_schedule": DEFAULT_EPS_SCHEDULE}
        if ctx.profile is not None:
            meta = ctx.profile.metadata
            cfg["profile"] = {k: meta[k] for k in ("model_class", "config_hash", "num_samples") if k in meta}
        return cfg


class MagCacheMethod(OursMethod):
    """MagCache at ``max_skip`` reuses in a row and ``retention`` of the steps always computed first; ``final``: the
    last 10 % of the steps too."""

    def __init__(self, name: str, description: str, default, sweep, *, max_skip: int, retention: float,
                 final: bool = False):
        super().__init__(name, description, "threshold", default, sweep, needs=("baselines",))
        self.max_skip, self.retention, self.final = max_skip, retention, final

    def _final_steps(self, ctx: MethodContext) -> int:
        return final_step_count(ctx.num_inference_steps) if self.final else 0

    def config(self, value, ctx: MethodContext) -> MagCacheConfig:
        """MagCache on the baselines' ratio table."""
        return MagCacheConfig(ratios=ctx.baselines.magcache_ratios, threshold=float(value), max_skip=self.max_skip,
                              retention_ratio=self.retention, final_steps=self._final_steps(ctx))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its caps and which run the ratio table came from."""
        cfg = {"max_skip": self.max_skip, "retention_ratio": self.retention, "final_steps": self._final_steps(ctx)}
        if ctx.baselines is not None:
            cfg["ratios"] = f"{len(ctx.baselines.magcache_ratios)}-step table from 1 uncached run"
            cfg["ratios_prompt"] = ctx.baselines.magcache_prompt
        return cfg


class TeaCacheMethod(OursMethod):
    """TeaCache with the baselines' rescaling polynomial."""

    def __init__(self, name: str, description: str, default, sweep):
        super().__init__(name, description, "threshold", default, sweep, needs=("baselines",))

    def config(self, value, ctx: MethodContext) -> TeaCacheConfig:
        """TeaCache at ``value``."""
        return TeaCacheConfig(threshold=float(value), coefficients=ctx.baselines.teacache(TEACACHE_ORDER),
                              final_steps=TEACACHE_FINAL_STEPS)

    def details(self, value, ctx: MethodContext) -> dict:
        """The polynomial's order and coefficients."""
        cfg = {"order": TEACACHE_ORDER, "final_steps": TEACACHE_FINAL_STEPS}
        if ctx.baselines is not None:
            cfg["coefficients"] = list(ctx.baselines.teacache(TEACACHE_ORDER))
        return cfg


class SeaCacheMethod(OursMethod):
    """SeaCache in our adapter: as diffusers runs it, or as published (``paper``)."""

    def __init__(self, name: str, description: str, default, sweep, *, paper: bool = False):
        super().__init__(name, description, "threshold", default, sweep)
        self.paper = paper

    def config(self, value, ctx: MethodContext) -> SeaCacheConfig:
        """SeaCache at ``value``."""
        return SeaCacheConfig.paper(threshold=float(value)) if self.paper else SeaCacheConfig(threshold=float(value))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its signal, residual order and caps."""
        c = self.config(value, ctx)
        return {"signal": c.signal, "residual_order": c.residual_order, "retention_steps": c.retention_steps,
                "cache_end_steps": c.cache_end_steps, "max_consecutive": c.max_consecutive, "power_exp": c.power_exp}


class FixedMethod(OursMethod):
    """Compute every k-th step; ``final``: also the last 10 % of the steps."""

    def __init__(self, name: str, description: str, default, sweep, *, final: bool = False):
        super().__init__(name, description, "interval", default, sweep, integer=True)
        self.final = final

    def _final_steps(self, ctx: MethodContext) -> int:
        return final_step_count(ctx.num_inference_steps) if self.final else 0

    def config(self, value, ctx: MethodContext) -> FixedConfig:
        """Every ``value``-th step."""
        return FixedConfig(interval=int(value), final_steps=self._final_steps(ctx))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its warm-up and final steps."""
        return {"warmup_steps": 0, "final_steps": self._final_steps(ctx)}


class SessionHandle:
    """A sencache rule config put on a pipeline with :func:`sencache.enable`, as a :class:`Handle`
    (``stats()`` is the adapter's trace summary, with ``nfe``)."""

    def __init__(self, pipe, config):
        self.pipe = pipe
        self.session = hooks.enable(pipe, config)

    def stats(self) -> dict:
        """The trace summary of the last generation."""
        return dict(self.session.summary())

    def remove(self) -> None:
        """Take the cache off the pipeline."""
        hooks.disable(self.pipe)
