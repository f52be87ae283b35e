"""Errors a user can act on. Each message is one line that says what to do."""


class SenCacheError(ValueError):
    """Base class: bad input to sencache (a wrong profile, config, model or latent)."""


class ProfileError(SenCacheError):
    """A sensitivity profile that cannot be read, is malformed, or belongs to another model."""


class UnsupportedModelError(SenCacheError):
    """A transformer whose block stack sencache cannot find or skip."""
