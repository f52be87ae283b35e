"""cache-dit, the one optional package a method needs: imported only when asked for, its chatter kept quiet."""

from __future__ import annotations

import os


def import_cache_dit():
    """The ``cache_dit`` module (ImportError when it is not installed)."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # its info/warning chatter would bury the progress bar
    import cache_dit  # noqa: PLC0415 (optional dependency)

    return cache_dit


def cache_dit_available() -> bool:
    """Whether cache-dit can be imported here."""
    try:
        import_cache_dit()
    except ImportError:
        return False
    return True


def cache_dit_version() -> str | None:
    """The installed cache-dit's version, or None."""
    try:
        return import_cache_dit().__version__
    except ImportError:
        return None
