"""cache-dit's DBCache (F1B0: the first block decides, the rest is cached), when ``cache_dit`` is installed."""

from __future__ import annotations

from sencache.adapter import hooks
from sencache.methods.base import CacheMethod, MethodContext
from sencache.methods.optional import cache_dit_version, import_cache_dit

DBCACHE_FN = 1
DBCACHE_BN = 0


def dbcache_warmup(steps: int) -> int:
    """cache-dit's warm-up steps, scaled from its default 8 at T = 50."""
    return max(1, int(round(0.16 * steps)))


class DBCacheMethod(CacheMethod):
    """cache-dit's DBCache through ``cache_dit.enable_cache``."""

    family = "cache-dit"

    def __init__(self):
        super().__init__("dbcache", "cache-dit DBCache F1B0 (first block decides, the rest is cached)",
                         "residual_diff_threshold", 0.08, (0.04, 0.08, 0.12, 0.2, 0.3),
                         needs=("cache_dit", "two_blocks"))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its block split, warm-up and cache-dit's version."""
        return {"Fn_compute_blocks": DBCACHE_FN, "Bn_compute_blocks": DBCACHE_BN,
                "max_warmup_steps": dbcache_warmup(ctx.num_inference_steps), "cache_dit": cache_dit_version()}

    def attach(self, pipe, value, ctx: MethodContext):
        """``cache_dit.enable_cache``; the extra stats are cache-dit's own summary of the cached steps."""
        cache_dit = import_cache_dit()
        hooks.disable(pipe)
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=DBCACHE_FN, Bn_compute_blocks=DBCACHE_BN, residual_diff_threshold=float(value),
            max_warmup_steps=dbcache_warmup(ctx.num_inference_steps), num_inference_steps=ctx.num_inference_steps)
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
