"""Where two videos differ, made visible: the amplified per-pixel difference as a heat map (dark = equal)."""

from __future__ import annotations

import numpy as np

from sencache.errors import SenCacheError

#: differences are small next to a frame's range: ×4 makes a 1/4-range error (64 levels) saturate
DEFAULT_GAIN = 4.0


def difference(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mean |other − reference| over RGB in [0, 1], (F, H, W), for uint8 videos (F, H, W, 3) of one shape."""
    a, b = np.asarray(reference), np.asarray(other)
    if a.shape != b.shape:
        raise SenCacheError(f"heat map of videos of different shapes: {a.shape} vs {b.shape}")
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1) / 255.0


def colour_scale(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] (any shape) through the inferno colour map, as uint8 (..., 3)."""
    from matplotlib import colormaps

    lut = (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return lut[np.rint(np.clip(level, 0.0, 1.0) * 255.0).astype(np.int64)]


def heat_map(reference: np.ndarray, other: np.ndarray, gain: float = DEFAULT_GAIN) -> np.ndarray:
    """``gain`` × |other − reference| through the colour scale, as uint8 (F, H, W, 3)."""
    return colour_scale(difference(reference, other) * gain)
