"""Prompt lists: reading a prompt file (one prompt per line; blank lines and lines starting with '#' are skipped),
and keeping evaluation prompts apart from calibration prompts (:func:`check_disjoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from sencache.errors import SenCacheError


def read_prompts(path) -> list[str]:
    """The prompts of a file, one per line (blank and ``#`` lines skipped); raises :class:`SenCacheError` if
    the file is unreadable or holds none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of the first prompt
    except FileNotFoundError:
        raise SenCacheError(f"prompt file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SenCacheError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise SenCacheError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def normalize_prompt(prompt: str) -> str:
    """Lower case, single spaces: two prompts that differ only in spacing or case are the same prompt."""
    return " ".join(str(prompt).lower().split())


def check_disjoint(calibration: Iterable[str], evaluation: Iterable[str], what: str = "calibration") -> None:
    """Raise :class:`SenCacheError` if any evaluation prompt is also a calibration prompt."""
    calib = {normalize_prompt(p) for p in calibration}
    overlap = [p for p in evaluation if normalize_prompt(p) in calib]
    if overlap:
        shown = "; ".join(repr(p) for p in overlap[:3]) + (" ..." if len(overlap) > 3 else "")
        raise SenCacheError(
            f"{len(overlap)} evaluation prompt(s) were also used for {what}: {shown}; "
            f"evaluate on held-out prompts (remove them from the prompt list or recalibrate on other prompts)"
        )
