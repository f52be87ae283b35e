"""SenCache: sensitivity-aware caching for diffusers video pipelines.

    import sencache
    profile = sencache.SensitivityProfile.load("profile.json")
    cache = sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=0.1))
    video = pipe(prompt, ...).frames
    print(cache.trace.summary())
"""

__version__ = "0.1.0"

from .calibrate import calibrate
from .errors import ProfileError, SenCacheError, UnsupportedModelError
from .hooks import CacheSession, active_session, disable, enable
from .profile import SensitivityProfile
from .rules import FixedConfig, MagCacheConfig, NoCacheConfig, SenCacheConfig, TeaCacheConfig
from .trace import Trace, TraceRecord

__all__ = [
    "CacheSession", "FixedConfig", "MagCacheConfig", "NoCacheConfig", "ProfileError", "SenCacheConfig", "TeaCacheConfig", "SenCacheError", "SensitivityProfile", "Trace",
    "TraceRecord", "UnsupportedModelError", "active_session", "calibrate", "disable", "enable",
]
