"""SenCache: sensitivity-aware caching for diffusers video pipelines.

    import sencache
    profile = sencache.SensitivityProfile.load("profile.json")
    cache = sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=0.1))
    video = pipe(prompt, ...).frames
    print(cache.trace.summary())

Budget mode is an explicit step: ``sencache.budget.with_target(sencache.SenCacheConfig(profile), target_nfe=25)``.

The pure core (configs, profile, rules, budget) is imported here directly and needs only torch and numpy;
the names that need diffusers (``enable``, ``disable``, ``calibrate``, ...) are loaded on first use, so
``import sencache.core`` never pulls in diffusers.
"""

from __future__ import annotations

import importlib

from sencache import budget
from sencache.core.profile import SensitivityProfile
from sencache.core.rules import (
    FixedConfig,
    MagCacheConfig,
    NoCacheConfig,
    SenCacheConfig,
    TeaCacheConfig,
)
from sencache.core.schedule import EpsSchedule
from sencache.errors import ProfileError, SenCacheError, UnsupportedModelError
from sencache.version import __version__

# public name -> module that defines it (loaded on first access: these need diffusers)
_LAZY = {
    "CacheSession": "sencache.adapter.session",
    "enable": "sencache.adapter.hooks",
    "disable": "sencache.adapter.hooks",
    "active_session": "sencache.adapter.hooks",
    "Trace": "sencache.adapter.trace",
    "TraceRecord": "sencache.adapter.trace",
    "calibrate": "sencache.calibration.calibrate",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sencache' has no attribute {name!r}")


__all__ = [
    "CacheSession", "EpsSchedule", "FixedConfig", "MagCacheConfig", "NoCacheConfig", "ProfileError", "SenCacheConfig",
    "SenCacheError", "SensitivityProfile", "TeaCacheConfig", "Trace", "TraceRecord", "UnsupportedModelError",
    "__version__", "active_session", "budget", "calibrate", "disable", "enable",
]
