"""Every method by name: ``none`` (the reference); ours through :func:`sencache.enable` — ``sencache``,
``sencache-loop``, ``sencache-loop-auto``, ``sencache-paper``, ``magcache``, ``magcache-final`` (last steps always
computed: the strong control), ``magcache-fast``, ``teacache``, ``seacache`` (diffusers' SeaCache behaviour, on every
architecture), ``seacache-paper``, ``fixed``, ``fixed-final``; diffusers' own caches — ``fbcache``,
``diffusers-seacache`` (Wan text-to-video only: the cross-check of ``seacache``), ``diffusers-seacache-hold``,
``taylorseer``, ``diffusers-magcache``; and cache-dit's DBCache (``dbcache``) when ``cache_dit`` is importable."""

from __future__ import annotations

from sencache.core.default_rule import LOOP_AUTO, LOOP_HOLD
from sencache.errors import SenCacheError
from sencache.methods.base import CacheMethod, MethodContext, NoCache
from sencache.methods.cache_dit import DBCacheMethod
from sencache.methods.diffusers_caches import (
    DiffusersMagCacheMethod,
    DiffusersSeaCacheMethod,
    FirstBlockCacheMethod,
    TaylorSeerMethod,
)
from sencache.methods.ours import (
    MAGCACHE_FAST_MAX_SKIP,
    MAGCACHE_FAST_RETENTION,
    MAGCACHE_MAX_SKIP,
    MAGCACHE_RETENTION,
    FixedMethod,
    MagCacheMethod,
    SeaCacheMethod,
    SenCacheMethod,
    TeaCacheMethod,
)

EPS_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
LOOP_SWEEP = (0.0001, 0.0003, 0.001, 0.003, 0.01)
MAGCACHE_SWEEP = (0.02, 0.06, 0.12, 0.24, 0.5, 1.0)
SEACACHE_SWEEP = (0.05, 0.1, 0.25, 0.5, 1.0)

_ALL: list[CacheMethod] = [
    NoCache(),
    SenCacheMethod("sencache", "SenCache (default): at a target NFE the rule budget mode picks for the model family "
                   "and budget (the closed loop or the eps-schedule rule, sencache.core.default_rule); at an eps alone "
                   "the eps-schedule rule (hold or forecast, whichever predicted error is smaller, while <= eps)",
                   0.1, EPS_SWEEP, budget_aware=True),
    SenCacheMethod("sencache-loop", "SenCache's closed loop (opt-in): per sample, hold while the clip error the reuse "
                   "is predicted to cost (learned from its refreshes, priced by the calibrated gain) stays <= eps",
                   0.001, LOOP_SWEEP, rule=LOOP_HOLD, needs=("profile", "loop")),
    SenCacheMethod("sencache-loop-auto", "the closed loop, holding or forecasting by the smaller learned error",
                   0.001, LOOP_SWEEP, rule=LOOP_AUTO, needs=("profile", "loop")),
    SenCacheMethod("sencache-paper", "SenCache as in the paper: hold the cache while S <= eps (constant eps, n = 3)",
                   0.1, EPS_SWEEP, paper=True),
    MagCacheMethod("magcache", "MagCache: accumulated magnitude-ratio error (table from one run)", 0.12,
                   MAGCACHE_SWEEP, max_skip=MAGCACHE_MAX_SKIP, retention=MAGCACHE_RETENTION),
    MagCacheMethod("magcache-final", "MagCache that always computes the last 10 % of the steps", 0.12,
                   MAGCACHE_SWEEP, max_skip=MAGCACHE_MAX_SKIP, retention=MAGCACHE_RETENTION, final=True),
    MagCacheMethod("magcache-fast", f"MagCache loosened for low budgets (K = {MAGCACHE_FAST_MAX_SKIP}, "
                   f"{MAGCACHE_FAST_RETENTION:.0%} retention)", 0.24, (0.06, 0.12, 0.24, 0.5, 1.0, 2.0),
                   max_skip=MAGCACHE_FAST_MAX_SKIP, retention=MAGCACHE_FAST_RETENTION),
    TeaCacheMethod("teacache", "TeaCache: accumulated rescaled change of the timestep modulation", 0.2,
                   (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)),
    SeaCacheMethod("seacache", "SeaCache as diffusers runs it (SEA-filtered latent, residual extrapolated from the "
                   "last two refreshes, <= 2 reuses in a row), on every architecture through the sencache adapter",
                   0.25, SEACACHE_SWEEP),
    SeaCacheMethod("seacache-paper", "SeaCache as published (SEA-filtered modulated input of the first block, the "
                   "residual held)", 0.25, SEACACHE_SWEEP, paper=True),
    FixedMethod("fixed", "compute every k-th step, reuse in between", 2, (2, 3, 4, 5)),
    FixedMethod("fixed-final", "every k-th step, and always the last 10 % of the steps", 2, (2, 3, 4, 5), final=True),
    FirstBlockCacheMethod(),
    DiffusersSeaCacheMethod("diffusers-seacache", "diffusers' own SeaCache (the cross-check of 'seacache'; Wan "
                            "text-to-video only)"),
    DiffusersSeaCacheMethod("diffusers-seacache-hold", "diffusers' own SeaCache holding the cached residual "
                            "(residual_order=0)", hold=True),
    TaylorSeerMethod(),
    DiffusersMagCacheMethod(),
    DBCacheMethod(),
]

METHODS: dict[str, CacheMethod] = {m.name: m for m in _ALL}


def method_names() -> list[str]:
    """Every method's name, in the registry's order."""
    return list(METHODS)


def get_method(name: str) -> CacheMethod:
    """The method called ``name``; an unknown name says which there are."""
    try:
        return METHODS[name]
    except KeyError:
        raise SenCacheError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}") from None


def available_methods(ctx: MethodContext | None = None, pipe=None) -> list[str]:
    """The methods that can run here (with ``ctx`` and on ``pipe``)."""
    return [n for n, m in METHODS.items() if m.unavailable(ctx, pipe) is None]


def ours_config(name: str, value, ctx: MethodContext):
    """The sencache-adapter config of one of our methods (sencache, magcache, teacache, fixed, ...) at ``value``."""
    method = get_method(name)
    if not hasattr(method, "config") or method.family != "ours":
        raise KeyError(name)
    return method.config(value, ctx)
