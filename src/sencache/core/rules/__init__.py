"""Pure caching rules: tensors and numbers in, a per-sample reuse/refresh decision out."""

from __future__ import annotations

from sencache.core.rules.fixed import FixedConfig, NoCacheConfig
from sencache.core.rules.magcache import MagCacheConfig
from sencache.core.rules.seacache import SeaCacheConfig
from sencache.core.rules.sencache import SenCacheConfig
from sencache.core.rules.teacache import TeaCacheConfig

__all__ = ["FixedConfig", "MagCacheConfig", "NoCacheConfig", "SeaCacheConfig", "SenCacheConfig", "TeaCacheConfig"]
