"""A registry of named caching methods, all under one accounting of the work they really do.

Each entry (:class:`MethodSpec`) knows how to put its cache on a pipeline and how to take it off:

    spec = get_method("magcache")
    handle = spec.apply(pipe, 0.12, MethodContext(num_inference_steps=50, baselines=baselines))
    frames = generate(pipe, prompt, seed, num_inference_steps=50).frames
    handle.stats()   # {"nfe": 27, "computed": 54, "calls": 100, "skipped_steps": [...], "schedule": [...]}
    handle.remove()

Methods: ``none`` (no cache hooks at all: the reference); ours through :func:`sencache.enable` —
``sencache``, ``magcache``, ``magcache-final`` (last steps always computed: the strong control),
``teacache``, ``seacache`` (diffusers' SeaCache behaviour, on every architecture), ``seacache-paper``, ``fixed``,
``fixed-final``; diffusers' own caches through ``transformer.enable_cache`` — ``fbcache``, ``diffusers-seacache``
(Wan text-to-video only: the cross-check of ``seacache``), ``taylorseer``, ``diffusers-magcache``; and cache-dit's
DBCache (``dbcache``) when ``cache_dit`` is importable.

**Accounting.** Every handle carries a :class:`StepCounter`, made of plain torch hooks that no cache
touches: a forward pre-hook on the transformer cuts the calls into denoising steps (a new step when the
timestep changes), and a forward pre-hook on the first ``nn.Linear`` inside the *last* block counts the calls
in which the block stack really ran (a cache that skips the stack never reaches it; TaylorSeer's predicted
blocks and FirstBlockCache's always-run first block do not count). From that:

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
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sencache.adapter import hooks
from sencache.adapter.layout import denoisers, find_block_stack
from sencache.core.default_rule import LOOP_AUTO, LOOP_HOLD, RULES, SCHEDULE, rule_for_profile
from sencache.core.rules import (
    FixedConfig,
    MagCacheConfig,
    SeaCacheConfig,
    SenCacheConfig,
    TeaCacheConfig,
)
from sencache.core.schedule import DEFAULT_EPS_SCHEDULE
from sencache.errors import SenCacheError
from sencache.harness.counter import StepCounter

REFERENCE = "none"

__all__ = [
    "METHODS",
    "REFERENCE",
    "MethodContext",
    "MethodHandle",
    "MethodSpec",
    "StepCounter",
    "available_methods",
    "final_step_count",
    "get_method",
    "method_names",
]


# --------------------------------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------------------------------


class MethodHandle:
    """A method applied to one pipeline. ``stats()`` describes the last generation; ``remove()`` undoes it."""

    def __init__(self, name: str, value, setting: dict, pipe, counter: StepCounter, undo: Callable[[], None],
                 extra: Callable[[], dict] | None = None):
        self.name, self.value, self.setting, self.pipe = name, value, setting, pipe
        self.counter = counter
        self._undo, self._extra = undo, extra
        self.removed = False

    def reset(self) -> None:
        self.counter.reset()

    def stats(self) -> dict:
        out = self.counter.stats()
        if self._extra is not None:
            out.update(self._extra())
        return out

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        try:
            self._undo()
        finally:
            self.counter.remove()

    def __enter__(self) -> "MethodHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


# --------------------------------------------------------------------------------------------------
# Context and specs
# --------------------------------------------------------------------------------------------------


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


SKIPPABLE_NEEDS = frozenset({"cache_dit", "two_blocks", "sea_adapter"})


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # reference | ours | diffusers | cache-dit
    description: str
    param: str | None  # name of the threshold parameter that the sweep varies
    default: float | int | None
    sweep: tuple = ()
    integer: bool = False  # the parameter is an integer (interval)
    higher_is_faster: bool = True
    budget_aware: bool = False  # its rule depends on the target NFE (MethodContext.rule)
    needs: tuple[str, ...] = ()  # "profile", "baselines", "cache_dit", "two_blocks", "one_expert", "sea_adapter"
    _settings: Callable[[Any, MethodContext], dict] = field(default=None, repr=False)
    _attach: Callable[[Any, Any, dict, MethodContext], tuple[Callable[[], None], Callable[[], dict] | None]] = field(
        default=None, repr=False)

    def coerce(self, value):
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
        if "cache_dit" in self.needs and not cache_dit_available():
            return "skipped: cache-dit not installed"
        if "profile" in self.needs and ctx.profile is None:
            return "skipped: no sensitivity profile (run `sencache calibrate`)"
        if "loop" in self.needs and ctx.profile is not None and "gain" not in ctx.profile.curves:
            return "skipped: the profile has no closed-loop calibration (run `sencache calibrate` again)"
        if "baselines" in self.needs and ctx.baselines is None:
            return "skipped: no calibrated baselines (baselines.json)"
        if ("diffusers_ratios" in self.needs and ctx.baselines is not None
                and not ctx.baselines.diffusers_magcache_ratios):
            return "skipped: baselines hold no diffusers MagCache ratios (recalibrate)"
        if "one_expert" in self.needs and pipe is not None and len(denoisers(pipe)) > 1:
            return f"skipped: {self.name} has one ratio table per pipeline, and this one has two experts"
        if "two_blocks" in self.needs and pipe is not None:
            if len(find_block_stack(pipe.transformer).blocks) < 2:
                return f"skipped: {self.name} needs at least 2 transformer blocks"
        if "sea_adapter" in self.needs and pipe is not None and not seacache_has_adapter(pipe):
            return (f"skipped: diffusers' SeaCache has adapters for Wan text-to-video and Cosmos 3 only; on "
                    f"{type(pipe).__name__} it gets no scheduler sigma and silently runs every step")
        return None

    def setting(self, value=None, ctx: MethodContext | None = None) -> dict:
        """The full, JSON-able setting of this method at ``value`` (what results record)."""
        ctx = ctx or MethodContext()
        value = self.coerce(value)
        out = {"method": self.name, "family": self.family}
        if self.param is not None:
            out[self.param] = value
        if self._settings is not None:
            out.update(self._settings(value, ctx))
        return out

    def setting_id(self, value=None) -> str:
        value = self.coerce(value)
        return self.name if self.param is None else f"{self.param}={value:g}"

    def apply(self, pipe, value=None, ctx: MethodContext | None = None) -> MethodHandle:
        """Put this method on ``pipe``; returns the handle (remove it before applying another method)."""
        ctx = ctx or MethodContext()
        reason = self.unavailable(ctx, pipe)
        if reason is not None:
            raise SenCacheError(f"{self.name} cannot run: {reason.removeprefix('skipped: ')}")
        value = self.coerce(value)
        setting = self.setting(value, ctx)
        counter = StepCounter(pipe)
        try:
            undo, extra = self._attach(pipe, value, setting, ctx) if self._attach else (lambda: None, None)
        except BaseException:
            counter.remove()
            raise
        return MethodHandle(self.name, value, setting, pipe, counter, undo, extra)


# --------------------------------------------------------------------------------------------------
# Ours, through sencache.enable
# --------------------------------------------------------------------------------------------------

SENCACHE_MAX_REUSE = 3
SENCACHE_FINAL_STEPS = 1
MAGCACHE_MAX_SKIP = 2  # the paper's "slow" Wan setting
MAGCACHE_RETENTION = 0.2
# With K = 2 and 20 % retention MagCache computes at least ~24 of 50 steps; "magcache-fast" loosens both so
# it can reach the budgets below that (15 of 50: 5 retained steps + one compute per 7 of the other 45).
MAGCACHE_FAST_MAX_SKIP = 6
MAGCACHE_FAST_RETENTION = 0.1
MAGCACHE_VARIANTS = {"magcache": (MAGCACHE_MAX_SKIP, MAGCACHE_RETENTION),
                     "magcache-final": (MAGCACHE_MAX_SKIP, MAGCACHE_RETENTION),
                     "magcache-fast": (MAGCACHE_FAST_MAX_SKIP, MAGCACHE_FAST_RETENTION)}
TEACACHE_ORDER = 1
TEACACHE_FINAL_STEPS = 1


def ours_config(name: str, value, ctx: MethodContext):
    """The sencache-adapter config of one of our methods (sencache, magcache, teacache, fixed, ...) at ``value``."""

    T = ctx.num_inference_steps
    rule = {"sencache-loop": LOOP_HOLD, "sencache-loop-auto": LOOP_AUTO}.get(name, ctx.rule or SCHEDULE)
    if rule not in RULES:
        raise SenCacheError(f"unknown SenCache rule {rule!r}; choose from {', '.join(RULES)}")
    if name == "sencache" and rule == SCHEDULE:
        return SenCacheConfig(ctx.profile, eps=float(value), max_reuse=SENCACHE_MAX_REUSE,
                              final_steps=SENCACHE_FINAL_STEPS, eps_schedule=DEFAULT_EPS_SCHEDULE, loop=False)
    if name in ("sencache", "sencache-loop", "sencache-loop-auto"):  # the closed loop, holding / choosing by error
        return SenCacheConfig(ctx.profile, eps=float(value), max_reuse=SENCACHE_MAX_REUSE,
                              final_steps=SENCACHE_FINAL_STEPS, loop=True,
                              forecast="auto" if rule == LOOP_AUTO else "hold")
    if name == "sencache-paper":
        return SenCacheConfig.paper(ctx.profile, eps=float(value))
    if name in MAGCACHE_VARIANTS:
        max_skip, retention = MAGCACHE_VARIANTS[name]
        return MagCacheConfig(ratios=ctx.baselines.magcache_ratios, threshold=float(value), max_skip=max_skip,
                              retention_ratio=retention,
                              final_steps=final_step_count(T) if name == "magcache-final" else 0)
    if name == "teacache":
        return TeaCacheConfig(threshold=float(value), coefficients=ctx.baselines.teacache(TEACACHE_ORDER),
                              final_steps=TEACACHE_FINAL_STEPS)
    if name in ("fixed", "fixed-final"):
        return FixedConfig(interval=int(value), final_steps=final_step_count(T) if name == "fixed-final" else 0)
    if name == "seacache":
        return SeaCacheConfig(threshold=float(value))
    if name == "seacache-paper":
        return SeaCacheConfig.paper(threshold=float(value))
    raise KeyError(name)


def _ours_settings(name: str):
    def settings(value, ctx: MethodContext) -> dict:
        T = ctx.num_inference_steps
        if name in ("sencache", "sencache-paper", "sencache-loop", "sencache-loop-auto"):
            c = ours_config(name, value, ctx) if ctx.profile is not None else None
            if c is not None and c.loop:
                cfg = {"rule": LOOP_AUTO if c.forecast == "auto" else LOOP_HOLD, "max_reuse": c.max_reuse,
                       "final_steps": c.final_steps, "learn_momentum": c.learn_momentum,
                       "combine": ctx.profile.metadata["loop"]["combine"]}
            elif c is not None:
                cfg = {"rule": SCHEDULE, "eps_start": c.eps_start, "warmup_fraction": c.warmup_fraction,
                       "max_reuse": c.max_reuse,
                       "final_steps": c.final_steps, "eps_schedule": c.eps_schedule.name if c.eps_schedule else None,
                       "forecast": c.forecast}
            else:
                cfg = {"eps_start": float(value) / 10, "warmup_fraction": 0.2, "max_reuse": SENCACHE_MAX_REUSE,
                       "final_steps": SENCACHE_FINAL_STEPS, "eps_schedule": DEFAULT_EPS_SCHEDULE}
            if ctx.profile is not None:
                meta = ctx.profile.metadata
                cfg["profile"] = {k: meta[k] for k in ("model_class", "config_hash", "num_samples") if k in meta}
            return cfg
        if name in MAGCACHE_VARIANTS:
            cfg = {"max_skip": MAGCACHE_VARIANTS[name][0], "retention_ratio": MAGCACHE_VARIANTS[name][1],
                   "final_steps": final_step_count(T) if name == "magcache-final" else 0}
            if ctx.baselines is not None:
                cfg["ratios"] = f"{len(ctx.baselines.magcache_ratios)}-step table from 1 uncached run"
                cfg["ratios_prompt"] = ctx.baselines.magcache_prompt
            return cfg
        if name == "teacache":
            cfg = {"order": TEACACHE_ORDER, "final_steps": TEACACHE_FINAL_STEPS}
            if ctx.baselines is not None:
                cfg["coefficients"] = list(ctx.baselines.teacache(TEACACHE_ORDER))
            return cfg
        if name in ("fixed", "fixed-final"):
            return {"warmup_steps": 0, "final_steps": final_step_count(T) if name == "fixed-final" else 0}
        if name in ("seacache", "seacache-paper"):
            c = ours_config(name, value, ctx)
            return {"signal": c.signal, "residual_order": c.residual_order, "retention_steps": c.retention_steps,
                    "cache_end_steps": c.cache_end_steps, "max_consecutive": c.max_consecutive,
                    "power_exp": c.power_exp}
        return {}

    return settings


def _attach_ours(name: str):
    def attach(pipe, value, setting, ctx: MethodContext):
        session = hooks.enable(pipe, ours_config(name, value, ctx))

        def extra() -> dict:
            summary = session.summary()
            records = session.trace.records
            steps = sorted({r.step for r in records})
            computed = {r.step for r in records if r.sample == 0 and r.computed}
            return {"trace": summary, "trace_schedule": [s in computed for s in steps]}

        return (lambda: hooks.disable(pipe)), extra

    return attach


def _attach_none(pipe, value, setting, ctx):
    return (lambda: None), None


# --------------------------------------------------------------------------------------------------
# diffusers' built-in caches
# --------------------------------------------------------------------------------------------------

# Wan's blocks are "blocks.0", "blocks.1", ...: cache whole blocks (TaylorSeer's default identifiers,
# "^blocks.*attn", fullmatch nothing on Wan, whose attention modules are attn1/attn2).
TAYLORSEER_IDENTIFIERS = (r"blocks\.\d+", r"transformer_blocks\.\d+")
TAYLORSEER_WARMUP = 3
DIFFUSERS_MAGCACHE_MAX_SKIP = 3
DIFFUSERS_MAGCACHE_RETENTION = 0.2


def _diffusers_config(name: str, value, ctx: MethodContext):
    import diffusers

    T = ctx.num_inference_steps
    if name == "fbcache":
        return diffusers.FirstBlockCacheConfig(threshold=float(value))
    if name == "diffusers-seacache":
        return diffusers.SeaCacheConfig(threshold=float(value))
    if name == "diffusers-seacache-hold":
        return diffusers.SeaCacheConfig(threshold=float(value), residual_order=0)
    if name == "taylorseer":
        return diffusers.TaylorSeerCacheConfig(
            cache_interval=int(value), disable_cache_before_step=TAYLORSEER_WARMUP, max_order=1,
            taylor_factors_dtype=torch.float32, cache_identifiers=list(TAYLORSEER_IDENTIFIERS))
    if name == "diffusers-magcache":
        return diffusers.MagCacheConfig(
            threshold=float(value), max_skip_steps=DIFFUSERS_MAGCACHE_MAX_SKIP,
            retention_ratio=DIFFUSERS_MAGCACHE_RETENTION, num_inference_steps=T,
            mag_ratios=list(ctx.baselines.diffusers_magcache_ratios))
    raise KeyError(name)


def _diffusers_settings(name: str):
    def settings(value, ctx: MethodContext) -> dict:
        if name == "fbcache":
            return {"note": "block 0 always runs; the rest is skipped per CFG branch"}
        if name in ("diffusers-seacache", "diffusers-seacache-hold"):
            return {"residual_order": 0 if name == "diffusers-seacache-hold" else 1, "retention_steps": 1,
                    "cache_end_steps": 1, "max_consecutive_cached": 2}
        if name == "taylorseer":
            return {"disable_cache_before_step": TAYLORSEER_WARMUP, "max_order": 1, "taylor_factors_dtype": "float32",
                    "cache_identifiers": list(TAYLORSEER_IDENTIFIERS)}
        if name == "diffusers-magcache":
            return {"max_skip_steps": DIFFUSERS_MAGCACHE_MAX_SKIP, "retention_ratio": DIFFUSERS_MAGCACHE_RETENTION,
                    "mag_ratios": "from a MagCacheConfig(calibrate=True) run (baselines.json)"}
        return {}

    return settings


def _attach_diffusers(name: str):
    def attach(pipe, value, setting, ctx: MethodContext):
        experts = list(denoisers(pipe).values())  # Wan 2.2: each expert gets its own cache
        hooks.disable(pipe)  # never stack two caches

        def undo():
            for transformer in experts:
                if transformer.is_cache_enabled:
                    transformer.disable_cache()

        undo()
        for transformer in experts:
            transformer.enable_cache(_diffusers_config(name, value, ctx))
            if name == "taylorseer" and not _taylorseer_hooked(transformer):
                undo()
                raise SenCacheError("TaylorSeer's cache_identifiers matched no module of this transformer")
        return undo, None

    return attach


def seacache_has_adapter(pipe) -> bool:
    """Whether diffusers' SeaCache can gate this pipeline's denoisers. Elsewhere it "fails open": no error, every
    step computed, which a comparison would report as a lossless 50-step run."""
    from diffusers import WanTransformer3DModel

    def supported(transformer) -> bool:
        if isinstance(transformer, WanTransformer3DModel):
            return transformer.config.in_channels == transformer.config.out_channels  # text-to-video only
        return type(transformer).__name__ == "Cosmos3OmniTransformer"

    return all(supported(t) for t in denoisers(pipe).values())


def _taylorseer_hooked(transformer) -> bool:
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_TAYLORSEER_CACHE_HOOK) is not None:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# cache-dit DBCache (optional)
# --------------------------------------------------------------------------------------------------

DBCACHE_FN = 1
DBCACHE_BN = 0


def cache_dit_available() -> bool:
    try:
        _import_cache_dit()
    except ImportError:
        return False
    return True


def _import_cache_dit():
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # its info/warning chatter would bury the progress bar
    import cache_dit  # noqa: PLC0415 (optional dependency)

    return cache_dit


def _dbcache_warmup(T: int) -> int:
    return max(1, int(round(0.16 * T)))  # cache-dit's default 8 warm-up steps at T = 50


def _dbcache_settings(value, ctx: MethodContext) -> dict:
    return {"Fn_compute_blocks": DBCACHE_FN, "Bn_compute_blocks": DBCACHE_BN,
            "max_warmup_steps": _dbcache_warmup(ctx.num_inference_steps), "cache_dit": _cache_dit_version()}


def _cache_dit_version() -> str | None:
    try:
        return _import_cache_dit().__version__
    except ImportError:
        return None


def _attach_dbcache(pipe, value, setting, ctx: MethodContext):
    cache_dit = _import_cache_dit()
    hooks.disable(pipe)
    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=DBCACHE_FN, Bn_compute_blocks=DBCACHE_BN, residual_diff_threshold=float(value),
        max_warmup_steps=_dbcache_warmup(ctx.num_inference_steps), num_inference_steps=ctx.num_inference_steps)
    cache_dit.enable_cache(pipe, cache_config=config)

    def extra() -> dict:
        try:
            stats = cache_dit.summary(pipe, logging=False)
        except Exception as exc:  # summary is a report, never a reason to fail a run
            return {"cache_dit_summary": f"unavailable: {exc}"}
        first = stats[0] if stats else None
        if first is None:
            return {}
        return {"cache_dit_cached_steps": list(getattr(first, "cached_steps", []) or []),
                "cache_dit_cfg_cached_steps": list(getattr(first, "cfg_cached_steps", []) or [])}

    return (lambda: cache_dit.disable_cache(pipe)), extra


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


def _spec(name, family, description, param, default, sweep, needs=(), integer=False, settings=None, attach=None,
          budget_aware=False):
    return MethodSpec(name=name, family=family, description=description, param=param, default=default,
                      sweep=tuple(sweep), integer=integer, needs=tuple(needs), _settings=settings, _attach=attach,
                      budget_aware=budget_aware)


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in [
        _spec("none", "reference", "no cache: every step runs the whole block stack", None, None, (),
              attach=_attach_none),
        _spec("sencache", "ours", "SenCache (default): at a target NFE the rule budget mode picks for the model "
              "family and budget (the closed loop or the eps-schedule rule, sencache.core.default_rule); at an eps "
              "alone the eps-schedule rule (hold or forecast, whichever predicted error is smaller, while <= eps)",
              "eps", 0.1, (0.02, 0.05, 0.1, 0.2, 0.3, 0.5), needs=("profile",), settings=_ours_settings("sencache"),
              attach=_attach_ours("sencache"), budget_aware=True),
        _spec("sencache-loop", "ours", "SenCache's closed loop (opt-in): per sample, hold while the clip error the "
              "reuse is predicted to cost (learned from its refreshes, priced by the calibrated gain) stays <= eps",
              "eps", 0.001, (0.0001, 0.0003, 0.001, 0.003, 0.01), needs=("profile", "loop"),
              settings=_ours_settings("sencache-loop"), attach=_attach_ours("sencache-loop")),
        _spec("sencache-loop-auto", "ours", "the closed loop, holding or forecasting by the smaller learned error",
              "eps", 0.001, (0.0001, 0.0003, 0.001, 0.003, 0.01), needs=("profile", "loop"),
              settings=_ours_settings("sencache-loop-auto"), attach=_attach_ours("sencache-loop-auto")),
        _spec("sencache-paper", "ours", "SenCache as in the paper: hold the cache while S <= eps (constant eps, n = 3)",
              "eps", 0.1, (0.02, 0.05, 0.1, 0.2, 0.3, 0.5), needs=("profile",),
              settings=_ours_settings("sencache-paper"), attach=_attach_ours("sencache-paper")),
        _spec("magcache", "ours", "MagCache: accumulated magnitude-ratio error (table from one run)", "threshold",
              0.12, (0.02, 0.06, 0.12, 0.24, 0.5, 1.0), needs=("baselines",), settings=_ours_settings("magcache"),
              attach=_attach_ours("magcache")),
        _spec("magcache-final", "ours", "MagCache that always computes the last 10 % of the steps", "threshold",
              0.12, (0.02, 0.06, 0.12, 0.24, 0.5, 1.0), needs=("baselines",),
              settings=_ours_settings("magcache-final"), attach=_attach_ours("magcache-final")),
        _spec("magcache-fast", "ours", f"MagCache loosened for low budgets (K = {MAGCACHE_FAST_MAX_SKIP}, "
              f"{MAGCACHE_FAST_RETENTION:.0%} retention)", "threshold", 0.24, (0.06, 0.12, 0.24, 0.5, 1.0, 2.0),
              needs=("baselines",), settings=_ours_settings("magcache-fast"), attach=_attach_ours("magcache-fast")),
        _spec("teacache", "ours", "TeaCache: accumulated rescaled change of the timestep modulation", "threshold",
              0.2, (0.05, 0.1, 0.2, 0.3, 0.5, 0.8), needs=("baselines",), settings=_ours_settings("teacache"),
              attach=_attach_ours("teacache")),
        _spec("seacache", "ours", "SeaCache as diffusers runs it (SEA-filtered latent, residual extrapolated from "
              "the last two refreshes, <= 2 reuses in a row), on every architecture through the sencache adapter",
              "threshold", 0.25, (0.05, 0.1, 0.25, 0.5, 1.0), settings=_ours_settings("seacache"),
              attach=_attach_ours("seacache")),
        _spec("seacache-paper", "ours", "SeaCache as published (SEA-filtered modulated input of the first block, "
              "the residual held)", "threshold", 0.25, (0.05, 0.1, 0.25, 0.5, 1.0),
              settings=_ours_settings("seacache-paper"), attach=_attach_ours("seacache-paper")),
        _spec("fixed", "ours", "compute every k-th step, reuse in between", "interval", 2, (2, 3, 4, 5),
              integer=True, settings=_ours_settings("fixed"), attach=_attach_ours("fixed")),
        _spec("fixed-final", "ours", "every k-th step, and always the last 10 % of the steps", "interval", 2,
              (2, 3, 4, 5), integer=True, settings=_ours_settings("fixed-final"), attach=_attach_ours("fixed-final")),
        _spec("fbcache", "diffusers", "diffusers FirstBlockCache (block 0 decides)", "threshold", 0.05,
              (0.02, 0.05, 0.1, 0.2, 0.4), needs=("two_blocks",), settings=_diffusers_settings("fbcache"),
              attach=_attach_diffusers("fbcache")),
        _spec("diffusers-seacache", "diffusers", "diffusers' own SeaCache (the cross-check of 'seacache'; Wan "
              "text-to-video only)", "threshold", 0.25, (0.05, 0.1, 0.25, 0.5, 1.0), needs=("sea_adapter",),
              settings=_diffusers_settings("diffusers-seacache"), attach=_attach_diffusers("diffusers-seacache")),
        _spec("diffusers-seacache-hold", "diffusers", "diffusers' own SeaCache holding the cached residual "
              "(residual_order=0)", "threshold", 0.25, (0.05, 0.1, 0.25, 0.5, 1.0), needs=("sea_adapter",),
              settings=_diffusers_settings("diffusers-seacache-hold"),
              attach=_attach_diffusers("diffusers-seacache-hold")),
        _spec("taylorseer", "diffusers", "diffusers TaylorSeer (fixed interval, Taylor forecast of block outputs)",
              "cache_interval", 3, (2, 3, 4, 5, 6), integer=True, settings=_diffusers_settings("taylorseer"),
              attach=_attach_diffusers("taylorseer")),
        _spec("diffusers-magcache", "diffusers", "diffusers MagCache (ratios from its calibrate=True run)",
              "threshold", 0.06, (0.02, 0.06, 0.12, 0.24, 0.5, 1.0),
              needs=("baselines", "diffusers_ratios", "one_expert"),
              settings=_diffusers_settings("diffusers-magcache"), attach=_attach_diffusers("diffusers-magcache")),
        _spec("dbcache", "cache-dit", "cache-dit DBCache F1B0 (first block decides, the rest is cached)",
              "residual_diff_threshold", 0.08, (0.04, 0.08, 0.12, 0.2, 0.3), needs=("cache_dit", "two_blocks"),
              settings=_dbcache_settings, attach=_attach_dbcache),
    ]
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise SenCacheError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}") from None


def available_methods(ctx: MethodContext | None = None, pipe=None) -> list[str]:
    return [n for n, s in METHODS.items() if s.unavailable(ctx, pipe) is None]
