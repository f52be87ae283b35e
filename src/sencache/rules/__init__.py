"""Pure caching rules: tensors and numbers in, a per-sample reuse/refresh decision out."""

from .fixed import FixedConfig, NoCacheConfig
from .magcache import MagCacheConfig
from .sencache import SenCacheConfig
from .teacache import TeaCacheConfig

__all__ = ["FixedConfig", "MagCacheConfig", "NoCacheConfig", "SenCacheConfig", "TeaCacheConfig"]
