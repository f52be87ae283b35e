"""Rank correlations without scipy: average ranks, Pearson's r and Spearman's ρ (how well a predicted error orders the
real ones)."""

from __future__ import annotations

import math

import numpy as np

from sencache.errors import SenCacheError


def rankdata(values) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def _paired(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise SenCacheError(f"{what} needs equal lengths (got {x.size} and {y.size})")
    return x, y


def pearson(x, y) -> float:
    """Pearson's r; NaN when fewer than 2 points or a constant input."""
    x, y = _paired(x, y, "pearson")
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / den) if den > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman's ρ: Pearson's r of the average ranks."""
    x, y = _paired(x, y, "spearman")
    if x.size < 2:
        return math.nan
    return pearson(rankdata(x), rankdata(y))
