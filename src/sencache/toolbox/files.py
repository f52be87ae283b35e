"""Atomic writes: a file is written beside its destination and moved over it in one step, so an interrupted write
never leaves a half-written profile, baselines table, checkpoint, picture or download behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_atomic(path, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it onto ``path``; the temporary file is
    removed if ``write`` fails. Creates the parent folder. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{suffix}{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path, text: str) -> Path:
    """``text`` written to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path, data: Any, indent: int | None = 1, allow_nan: bool = False) -> Path:
    """``data`` as JSON at ``path``, atomically. ``allow_nan=False`` (the default) refuses NaN and infinities, which
    strict JSON readers reject; checkpoints that Python alone reads back pass ``allow_nan=True``."""
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=allow_nan))
