"""diffusers' own caches, through ``transformer.enable_cache``: FirstBlockCache, SeaCache (Wan text-to-video only),
TaylorSeer and MagCache. Each expert of a two-expert pipeline gets its own cache."""

from __future__ import annotations

import diffusers
import torch
from diffusers import WanTransformer3DModel
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

from sencache.adapter import hooks
from sencache.adapter.layout import denoisers
from sencache.errors import SenCacheError
from sencache.methods.base import CacheMethod, MethodContext

# Wan's blocks are "blocks.0", "blocks.1", ...: cache whole blocks (TaylorSeer's default identifiers,
# "^blocks.*attn", fullmatch nothing on Wan, whose attention modules are attn1/attn2).
TAYLORSEER_IDENTIFIERS = (r"blocks\.\d+", r"transformer_blocks\.\d+")
TAYLORSEER_WARMUP = 3
DIFFUSERS_MAGCACHE_MAX_SKIP = 3
DIFFUSERS_MAGCACHE_RETENTION = 0.2


class DiffusersMethod(CacheMethod):
    """A diffusers cache config put on every denoising transformer (never stacked on one of ours)."""

    family = "diffusers"

    def config(self, value, ctx: MethodContext):
        """The diffusers cache config at ``value``."""
        raise NotImplementedError

    def check_attached(self, transformer) -> None:
        """Refuse a cache that went on but hooked nothing (nothing to check by default)."""

    def attach(self, pipe, value, ctx: MethodContext):
        """``enable_cache`` on each expert; undo disables them."""
        experts = list(denoisers(pipe).values())  # Wan 2.2: each expert gets its own cache
        hooks.disable(pipe)  # never stack two caches

        def undo():
            for transformer in experts:
                if transformer.is_cache_enabled:
                    transformer.disable_cache()

        undo()
        for transformer in experts:
            transformer.enable_cache(self.config(value, ctx))
            try:
                self.check_attached(transformer)
            except SenCacheError:
                undo()
                raise
        return undo, None


class FirstBlockCacheMethod(DiffusersMethod):
    """diffusers' FirstBlockCache: block 0 decides, per CFG branch."""

    def __init__(self):
        super().__init__("fbcache", "diffusers FirstBlockCache (block 0 decides)", "threshold", 0.05,
                         (0.02, 0.05, 0.1, 0.2, 0.4), needs=("two_blocks",))

    def config(self, value, ctx: MethodContext):
        """FirstBlockCache at ``value``."""
        return diffusers.FirstBlockCacheConfig(threshold=float(value))

    def details(self, value, ctx: MethodContext) -> dict:
        """How it counts."""
        return {"note": "block 0 always runs; the rest is skipped per CFG branch"}


class DiffusersSeaCacheMethod(DiffusersMethod):
    """diffusers' SeaCache, forecasting the residual (as shipped) or holding it (``hold``)."""

    def __init__(self, name: str, description: str, *, hold: bool = False):
        super().__init__(name, description, "threshold", 0.25, (0.05, 0.1, 0.25, 0.5, 1.0), needs=("sea_adapter",))
        self.hold = hold

    def config(self, value, ctx: MethodContext):
        """SeaCache at ``value``."""
        if self.hold:
            return diffusers.SeaCacheConfig(threshold=float(value), residual_order=0)
        return diffusers.SeaCacheConfig(threshold=float(value))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its residual order and caps (diffusers' defaults)."""
        return {"residual_order": 0 if self.hold else 1, "retention_steps": 1, "cache_end_steps": 1,
                "max_consecutive_cached": 2}

    def model_unsupported(self, pipe) -> str | None:
        """Its adapters: Wan text-to-video and Cosmos 3 only."""
        if seacache_has_adapter(pipe):
            return None
        return (f"skipped: diffusers' SeaCache has adapters for Wan text-to-video and Cosmos 3 only; on "
                f"{type(pipe).__name__} it gets no scheduler sigma and silently runs every step")


class TaylorSeerMethod(DiffusersMethod):
    """diffusers' TaylorSeer: a fixed interval, block outputs forecast by a first-order Taylor series."""

    def __init__(self):
        super().__init__("taylorseer", "diffusers TaylorSeer (fixed interval, Taylor forecast of block outputs)",
                         "cache_interval", 3, (2, 3, 4, 5, 6), integer=True)

    def config(self, value, ctx: MethodContext):
        """TaylorSeer every ``value`` steps, whole blocks cached."""
        return diffusers.TaylorSeerCacheConfig(
            cache_interval=int(value), disable_cache_before_step=TAYLORSEER_WARMUP, max_order=1,
            taylor_factors_dtype=torch.float32, cache_identifiers=list(TAYLORSEER_IDENTIFIERS))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its warm-up, order and the modules it caches."""
        return {"disable_cache_before_step": TAYLORSEER_WARMUP, "max_order": 1, "taylor_factors_dtype": "float32",
                "cache_identifiers": list(TAYLORSEER_IDENTIFIERS)}

    def check_attached(self, transformer) -> None:
        """Its identifiers must match some module, or it silently caches nothing."""
        if not _taylorseer_hooked(transformer):
            raise SenCacheError("TaylorSeer's cache_identifiers matched no module of this transformer")


class DiffusersMagCacheMethod(DiffusersMethod):
    """diffusers' MagCache on the ratios of its own calibration run."""

    def __init__(self):
        super().__init__("diffusers-magcache", "diffusers MagCache (ratios from its calibrate=True run)", "threshold",
                         0.06, (0.02, 0.06, 0.12, 0.24, 0.5, 1.0),
                         needs=("baselines", "diffusers_ratios", "one_expert"))

    def config(self, value, ctx: MethodContext):
        """MagCache at ``value`` on the baselines' diffusers ratios."""
        return diffusers.MagCacheConfig(
            threshold=float(value), max_skip_steps=DIFFUSERS_MAGCACHE_MAX_SKIP,
            retention_ratio=DIFFUSERS_MAGCACHE_RETENTION, num_inference_steps=ctx.num_inference_steps,
            mag_ratios=list(ctx.baselines.diffusers_magcache_ratios))

    def details(self, value, ctx: MethodContext) -> dict:
        """Its caps and where the ratios came from."""
        return {"max_skip_steps": DIFFUSERS_MAGCACHE_MAX_SKIP, "retention_ratio": DIFFUSERS_MAGCACHE_RETENTION,
                "mag_ratios": "from a MagCacheConfig(calibrate=True) run (baselines.json)"}


def seacache_has_adapter(pipe) -> bool:
    """Whether diffusers' SeaCache can gate this pipeline's denoisers. Elsewhere it "fails open": no error, every
    step computed, which a comparison would report as a lossless 50-step run."""

    def supported(transformer) -> bool:
        if isinstance(transformer, WanTransformer3DModel):
            return transformer.config.in_channels == transformer.config.out_channels  # text-to-video only
        return type(transformer).__name__ == "Cosmos3OmniTransformer"

    return all(supported(t) for t in denoisers(pipe).values())


def _taylorseer_hooked(transformer) -> bool:
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_TAYLORSEER_CACHE_HOOK) is not None:
            return True
    return False
