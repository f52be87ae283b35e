"""Reading a prompt file: one prompt per line; blank lines and lines starting with '#' are skipped."""

from __future__ import annotations

from pathlib import Path

from .errors import SenCacheError


def read_prompts(path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SenCacheError(f"prompt file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SenCacheError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise SenCacheError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts
