"""Errors a user can act on. Each message is one line that says what to do."""

from __future__ import annotations

import numbers


class SenCacheError(ValueError):
    """Base class: bad input to sencache (a wrong profile, config, model or latent)."""


class ProfileError(SenCacheError):
    """A sensitivity profile that cannot be read, is malformed, or belongs to another model."""


class UnsupportedModelError(SenCacheError):
    """A transformer whose block stack sencache cannot find or skip."""


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a SenCacheError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SenCacheError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)
