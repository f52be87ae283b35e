"""The worst videos of a comparison, beside the mean: a user sees one clip, not an average.

Per method setting, over its prompt x seed pairs: the 10th-percentile PSNR (numpy's linear percentile), the worst
pair's PSNR and the worst pair's LPIPS, the number of broken clips (PSNR below :data:`BROKEN_PSNR_DB` against the
uncached clip) and the number of distinct compute/reuse schedules the method used (a rule that gives every prompt
the same pattern is a fixed schedule, whatever it measures).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["BROKEN_PSNR_DB", "PSNR_CAP_DB", "TAIL_FIELDS", "tail_fields", "with_tails"]

BROKEN_PSNR_DB = 20.0
PSNR_CAP_DB = 100.0  # the PSNR given to a clip identical to its reference (MSE 0)
TAIL_FIELDS = ("psnr_p10", "psnr_min", "lpips_max", "broken", "schedules", "pairs")


def _values(per_prompt: Sequence[dict], key: str) -> np.ndarray:
    return np.array([float(p[key]) for p in per_prompt if p.get(key) is not None], dtype=np.float64)


def tail_fields(per_prompt: Sequence[dict]) -> dict:
    """The tail of one setting's per-pair results (``psnr``, ``lpips``, ``skipped_steps`` per pair)."""
    psnr, lpips = _values(per_prompt, "psnr"), _values(per_prompt, "lpips")
    schedules = {tuple(p.get("skipped_steps") or ()) for p in per_prompt}
    return {
        "psnr_p10": float(np.percentile(psnr, 10)) if psnr.size else None,
        "psnr_min": float(psnr.min()) if psnr.size else None,
        "lpips_max": float(lpips.max()) if lpips.size else None,
        "broken": int((psnr < BROKEN_PSNR_DB).sum()),
        "schedules": len(schedules) if per_prompt else 0,
        "pairs": len(per_prompt),
    }


def with_tails(results: dict) -> dict:
    """``results`` with the tail fields on every setting (filled from its per-pair values where missing, so
    results written before these fields existed report them too). Changes ``results`` in place; returns it."""
    for entry in results.get("methods", {}).values():
        for setting in entry.get("settings", []):
            if any(key not in setting for key in TAIL_FIELDS):
                setting.update(tail_fields(setting.get("per_prompt", [])))
    return results
