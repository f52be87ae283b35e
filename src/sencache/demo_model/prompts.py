"""The demo model's default prompt sets: calibration captions and held-out evaluation captions, drawn from the
training grammar with fixed seeds and kept disjoint."""

from __future__ import annotations

from typing import Iterable, Sequence

from sencache.demo_model.data import dataset_prompts
from sencache.errors import SenCacheError
from sencache.runtime.prompts import normalize_prompt

CALIBRATION_PROMPT_SEED = 7_001  # dataset_prompts seed of the default calibration prompts
EVALUATION_PROMPT_SEED = 9_002  # ... and of the default evaluation prompts (filtered to stay disjoint)
DEFAULT_CALIBRATION_PROMPTS = 4


def default_calibration_prompts(n: int = DEFAULT_CALIBRATION_PROMPTS, seed: int = CALIBRATION_PROMPT_SEED) -> list[str]:
    """``n`` distinct captions of the demo model's grammar, reserved for calibration."""

    return _distinct(dataset_prompts(4 * n + 8, seed), n, exclude=())


def default_evaluation_prompts(n: int, exclude: Iterable[str] = (), seed: int = EVALUATION_PROMPT_SEED) -> list[str]:
    """``n`` distinct captions disjoint from ``exclude`` (the calibration prompts)."""

    return _distinct(dataset_prompts(4 * n + 32, seed), n, exclude=exclude)


def _distinct(candidates: Sequence[str], n: int, exclude: Iterable[str]) -> list[str]:
    seen = {normalize_prompt(p) for p in exclude}
    out = []
    for p in candidates:
        key = normalize_prompt(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
        if len(out) == n:
            return out
    raise SenCacheError(f"could not draw {n} distinct prompts; ask for fewer")
