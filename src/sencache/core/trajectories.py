"""Calibration trajectories stored in a profile, what budget mode replays the rule on.

``sencache calibrate`` stores, for up to :data:`MAX_TRAJECTORIES` trajectories, the pairwise RMS distances
D[j][k] = rms(x_k − x_j) of the latents the transformer received at grid steps j and k, with the grid's
timesteps (``profile.metadata["trajectories"]``: upper triangle, float32 values written as their shortest
decimal so they load back bit-exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from sencache.core.change import rms_per_sample
from sencache.errors import SenCacheError

TRAJECTORY_KEY = "trajectories"
MAX_TRAJECTORIES = 8  # calibration stores at most this many trajectories (T x T floats each)
RECALIBRATE = ("run `sencache calibrate` again (from prompts, not --videos) with this version of sencache "
               "to store them")


# --------------------------------------------------------------------------------------------
# stored trajectories
# --------------------------------------------------------------------------------------------
def _short(value: float) -> float:
    """A float32 value as the Python float of its shortest decimal: compact in JSON, exact on reload."""
    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def pack_distances(dist: np.ndarray) -> list[list[float]]:
    """Upper triangle of a (T, T) distance matrix: row j holds D[j][j+1:], as short float32 decimals."""
    d = np.asarray(dist, dtype=np.float32)
    return [[_short(v) for v in d[j, j + 1:]] for j in range(d.shape[0] - 1)]


def unpack_distances(rows: Sequence[Sequence[float]], num_steps: int) -> np.ndarray:
    """Inverse of :func:`pack_distances`: the full symmetric (T, T) matrix in float64 (float32-exact values)."""
    d = np.zeros((num_steps, num_steps), dtype=np.float64)
    if len(rows) != num_steps - 1:
        raise SenCacheError(f"stored trajectory has {len(rows) + 1} steps, expected {num_steps}; {RECALIBRATE}")
    for j, row in enumerate(rows):
        if len(row) != num_steps - 1 - j:
            raise SenCacheError(f"stored trajectory row {j} has the wrong length; {RECALIBRATE}")
        vals = np.asarray(row, dtype=np.float32).astype(np.float64)
        d[j, j + 1:] = vals
        d[j + 1:, j] = vals
    return d


def distance_matrix(latents: Sequence[torch.Tensor]) -> np.ndarray:
    """D[j][k] = rms(x_k − x_j), computed exactly as the online rule computes rms(x − x_ref)."""

    n = len(latents)
    d = np.zeros((n, n), dtype=np.float64)
    for k in range(n):
        for j in range(k):
            x = latents[k]
            v = float(rms_per_sample(x - latents[j].to(x.device, x.dtype)).double().cpu()[0])
            d[j, k] = d[k, j] = v
    return d


def trajectory_metadata(timesteps: Sequence[float], dists: Sequence[np.ndarray], prompts=None, seeds=None) -> dict:
    """The ``profile.metadata['trajectories']`` entry for a grid and its distance matrices (at most
    :data:`MAX_TRAJECTORIES`), with the prompts and seeds they came from.
    """
    dists = list(dists)[:MAX_TRAJECTORIES]
    out = {
        "timesteps": [float(t) for t in timesteps],
        "dist": [pack_distances(d) for d in dists],
        "layout": "upper triangle: dist[sample][j] = [rms(x_k - x_j) for k in j+1..T-1]; float32 values",
    }
    if prompts is not None:
        out["prompts"] = list(prompts)[: len(dists)]
    if seeds is not None:
        out["seeds"] = [int(s) for s in list(seeds)[: len(dists)]]
    return out


@dataclass
class Trajectories:
    """The stored calibration trajectories, unpacked: the grid's timesteps and one (T, T) distance matrix per
    trajectory."""
    timesteps: np.ndarray  # (T,) float64, the grid in transformer-input units
    dist: list[np.ndarray]  # per sample (T, T)
    prompts: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """T, the grid's step count."""
        return int(self.timesteps.shape[0])


def trajectories_of(profile) -> Trajectories:
    """The calibration trajectories stored in ``profile``; a clear error if it has none."""
    info = profile.metadata.get(TRAJECTORY_KEY)
    if not isinstance(info, dict) or not info.get("dist") or not info.get("timesteps"):
        raise SenCacheError(f"this profile stores no calibration trajectories, which budget mode (target_nfe / "
                            f"target_speedup) simulates; {RECALIBRATE}")
    ts = np.asarray([float(t) for t in info["timesteps"]], dtype=np.float64)
    if ts.size < 2:
        raise SenCacheError(f"the stored trajectories have fewer than 2 steps; {RECALIBRATE}")
    dist = [unpack_distances(rows, ts.size) for rows in info["dist"]]
    for d in dist:
        if not np.all(np.isfinite(d)):
            raise SenCacheError(f"a stored trajectory holds NaN or inf; {RECALIBRATE}")
        if np.any(d < 0):
            raise SenCacheError(f"a stored trajectory holds negative distances (smallest {float(d.min()):g}); "
                                f"{RECALIBRATE}")
    return Trajectories(ts, dist, list(info.get("prompts") or []))
