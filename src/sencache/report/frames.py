"""The frames of a comparison on disk: every clip of every pair as uint8 arrays in one ``frames.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_frames(path, frames: dict[str, np.ndarray]) -> Path:
    """Frames keyed "job|variant" as uint8 arrays in one compressed npz."""
    path = Path(path)
    np.savez_compressed(path, **{k: np.asarray(v, dtype=np.uint8) for k, v in frames.items()})
    return path


def load_frames(path) -> dict[str, np.ndarray]:
    """The clips :func:`save_frames` wrote, by key."""
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
