"""The project page's captions: which object of the prompt differs most between two cached clips.

For "a large blue square moving down and a small red circle moving left", each object's region is tracked
through the frames by colour (:func:`.judge.object_regions`, in the uncached clip and both cached ones: an object
drawn in another place differs in both places), and the object whose region holds the largest mean
|first − second| is named, with how far each cached clip is from the uncached one there.
"""

from __future__ import annotations

import numpy as np

from sencache.demo_model.judge import object_regions


def _mean_abs(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean |a − b| in 0..255 levels over the pixels of ``region`` (F, H, W)."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
    return float(d[region].mean()) if region.any() else 0.0


def most_different_object(caption: str, reference: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict | None:
    """The caption's object whose region differs most between ``first`` and ``second`` (uint8 (F, H, W, 3)
    videos of the same prompt and seed): {"object", "difference", "first_error", "second_error"} in 0..255
    levels, or None when no object of the caption is found in any of the three clips."""
    regions = [object_regions(video, caption) for video in (reference, first, second)]
    best = None
    for i, (phrase, _) in enumerate(regions[0]):
        region = regions[0][i][1] | regions[1][i][1] | regions[2][i][1]
        if not region.any():
            continue
        entry = {"object": phrase, "difference": _mean_abs(first, second, region),
                 "first_error": _mean_abs(first, reference, region),
                 "second_error": _mean_abs(second, reference, region)}
        if best is None or entry["difference"] > best["difference"]:
            best = entry
    return best


def difference_caption(caption: str, reference: np.ndarray, first: np.ndarray, second: np.ndarray,
                       names: tuple[str, str] = ("MagCache", "SenCache")) -> str:
    """"Difference: the small red circle moving left (MagCache 12.3 levels off the uncached clip there,
    SenCache 2.1)"."""
    found = most_different_object(caption, reference, first, second)
    if found is None:
        return "Difference: no object of the caption is drawn in any of the clips"
    return (f"Difference: the {found['object']} ({names[0]} {found['first_error']:.1f} levels off the uncached clip "
            f"there, {names[1]} {found['second_error']:.1f})")
