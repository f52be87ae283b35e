"""The SenCache authors' sensitivity tables, read and converted to this project's RMS units.

The reference implementation saves, per model, an ``.npz`` with ``timesteps`` (the scheduler's 0–1000
units) and either the averaged curves ``J_x_norm``, ``J_t_norm`` (optionally ``sample_counts``), or one
raw ``(samples, steps, 2)`` array (``[..., 0]`` = J_x, ``[..., 1]`` = J_t; a failed measurement is left
as 0). Its norms are L2 over the whole latent. J_x is a ratio of two norms of same-shaped tensors, so it
is the same in RMS units; J_t is an L2 norm per unit timestep, so in RMS units it is divided by
√(number of elements of the latent it was measured on). This module reads such a file and returns the
converted curves; :meth:`sencache.SensitivityProfile.from_reference` builds a profile from them.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sencache.errors import ProfileError

TIMESTEP_RANGE = (0.0, 1000.0)  # the scheduler's units the authors' tables use

# Latent shapes (C, F, H, W) the authors measured on (from the paper's settings); √numel converts J_t.
REFERENCE_LATENTS = {
    "wan2.1": (16, 21, 60, 104),  # 832×480, 81 frames
    "cogvideox1.5": (16, 14, 60, 90),  # 720×480, 49 frames (latent frames padded to even)
    "ltx-video-0.9.1": (128, 21, 16, 24),  # 768×512, 161 frames, packed
}


@dataclass
class ReferenceTable:
    """A reference table in RMS units: ascending ``timesteps`` with ``jx``, ``jt`` and the number of
    samples behind each value (None where the file does not say); ``conversion`` records what was done."""

    timesteps: np.ndarray
    jx: np.ndarray
    jt: np.ndarray
    count_jx: np.ndarray | None = None
    count_jt: np.ndarray | None = None
    conversion: dict[str, Any] = field(default_factory=dict)


def latent_numel(latent_shape: Sequence[int]) -> int:
    """C·F·H·W of a latent shape given as four positive integers (a clear error otherwise)."""
    shape = tuple(latent_shape) if latent_shape is not None else ()
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in shape):
        raise ProfileError(f"latent_shape must be four positive integers (C, F, H, W), got {latent_shape!r}; "
                           f"e.g. {REFERENCE_LATENTS['wan2.1']} for Wan 2.1 at 832x480x81")
    return int(np.prod(shape))


def read_reference_table(path, latent_shape: Sequence[int]) -> ReferenceTable:
    """Read the authors' ``.npz`` at ``path`` (never unpickling) and convert it to RMS units for a latent of
    ``latent_shape`` = (C, F, H, W), the one the table was measured on."""
    path = Path(path)
    numel = latent_numel(latent_shape)
    arrays = _load(path)
    if "timesteps" not in arrays:
        raise ProfileError(f"{path} has no 'timesteps' array (it has: {', '.join(sorted(arrays)) or 'nothing'}); "
                           f"a reference table needs timesteps and J_x_norm/J_t_norm or one (samples, steps, 2) array")
    t = _vector(arrays["timesteps"], "timesteps", path)
    steps = t.size
    has_x, has_t = "J_x_norm" in arrays, "J_t_norm" in arrays
    if has_x != has_t:
        raise ProfileError(f"{path} has {'J_x_norm' if has_x else 'J_t_norm'} but not "
                           f"{'J_t_norm' if has_x else 'J_x_norm'}; both are needed")
    count_jx = count_jt = None
    if has_x:
        jx = _vector(arrays["J_x_norm"], "J_x_norm", path, steps)
        jt = _vector(arrays["J_t_norm"], "J_t_norm", path, steps)
        if "sample_counts" in arrays:
            count_jx = count_jt = _vector(arrays["sample_counts"], "sample_counts", path, steps)
        source = "averaged J_x_norm / J_t_norm"
        keep = np.ones(steps, dtype=bool) if count_jx is None else count_jx > 0
    else:
        name, raw = _raw_array(arrays, steps, path)
        jx, count_jx = _mean_ignoring_zeros(raw[..., 0])
        jt, count_jt = _mean_ignoring_zeros(raw[..., 1])
        source = f"raw ({raw.shape[0]}, {steps}, 2) array '{name}', zeros (failed measurements) left out of the means"
        keep = (count_jx > 0) & (count_jt > 0)
    for name, values in (("J_x", jx), ("J_t", jt)):
        if (values[keep] < 0).any():
            raise ProfileError(f"{path}: {name} holds negative values; a norm is >= 0")
    _check_timesteps(t, path)
    if not keep.any():
        raise ProfileError(f"{path}: every timestep failed (no non-zero measurement); nothing to import")
    return _converted(t, jx, jt, count_jx, count_jt, keep, source, path, latent_shape, numel)


def _check_timesteps(t: np.ndarray, path: Path) -> None:
    """The table's timesteps must be distinct and in the scheduler's 0–1000 units."""
    steps = t.size
    lo, hi = TIMESTEP_RANGE
    if t.min() < lo or t.max() > hi:
        raise ProfileError(f"{path}: timesteps span {t.min():g}..{t.max():g}, outside the scheduler's {lo:g}–{hi:g} "
                           f"units the reference tables use")
    if steps > 1 and t.max() <= 1.0:  # 0-1 sigmas read as 0-1000 timesteps would clamp every lookup
        raise ProfileError(f"{path}: timesteps span {t.min():g}..{t.max():g}, which looks like 0-1 units (sigmas), "
                           f"not the 0-1000 scheduler timesteps the reference tables use; convert the table first "
                           f"(timesteps x 1000 and J_t / 1000) or calibrate with `sencache calibrate`")
    if np.unique(t).size != steps:
        raise ProfileError(f"{path}: timesteps are not distinct")


def _converted(t, jx, jt, count_jx, count_jt, keep, source: str, path: Path, latent_shape,
               numel: int) -> ReferenceTable:
    """The kept timesteps in ascending order, J_t in RMS units, and a record of the conversion."""
    dropped = [float(v) for v in t[~keep]]
    order = np.argsort(t[keep])
    scale = math.sqrt(numel)
    conversion = {
        "source_file": path.name,
        "source_arrays": source,
        "latent_shape": [int(v) for v in latent_shape],
        "latent_numel": numel,
        "jx": "unchanged (a ratio of two L2 norms of same-shaped tensors is the same in RMS units)",
        "jt": f"divided by sqrt(numel) = {scale:.6g} (an L2 norm per unit timestep becomes RMS per unit timestep)",
        "dropped_timesteps": dropped,
    }

    def pick(values):
        return None if values is None else np.asarray(values, dtype=np.float64)[keep][order]

    return ReferenceTable(timesteps=t[keep][order], jx=jx[keep][order], jt=jt[keep][order] / scale,
                          count_jx=pick(count_jx), count_jt=pick(count_jt), conversion=conversion)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ProfileError(f"reference table {path} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ProfileError(f"cannot read reference table {path} as .npz without pickles ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ProfileError(f"{path} is a single .npy array; a reference table is an .npz with named arrays")
    try:
        return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ProfileError(f"cannot read reference table {path} as .npz without pickles ({exc})") from None
    finally:
        data.close()


def _vector(values: np.ndarray, name: str, path: Path, size: int | None = None) -> np.ndarray:
    if values.dtype.kind not in "iuf":
        raise ProfileError(f"{path}: '{name}' must hold numbers (dtype {values.dtype})")
    v = np.asarray(values, dtype=np.float64).reshape(-1) if values.ndim <= 1 else None
    if v is None:
        raise ProfileError(f"{path}: '{name}' must be one-dimensional (shape {values.shape})")
    if size is not None and v.size != size:
        raise ProfileError(f"{path}: '{name}' has {v.size} entries but there are {size} timesteps")
    if v.size == 0:
        raise ProfileError(f"{path}: '{name}' is empty")
    if not np.isfinite(v).all():
        raise ProfileError(f"{path}: '{name}' holds NaN or inf")
    return v


def _raw_array(arrays: dict, steps: int, path: Path) -> tuple[str, np.ndarray]:
    """The one (samples, steps, 2) array of a raw table."""
    found = [k for k, v in arrays.items() if k != "timesteps" and v.ndim == 3 and v.shape[1:] == (steps, 2)]
    if not found:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k != "timesteps") or "none"
        raise ProfileError(f"{path}: no J_x_norm/J_t_norm and no (samples, {steps}, 2) array to average "
                           f"(other arrays: {shapes})")
    if len(found) > 1:
        raise ProfileError(f"{path}: several (samples, steps, 2) arrays ({', '.join(found)}); keep one")
    raw = arrays[found[0]]
    if raw.dtype.kind not in "iuf":
        raise ProfileError(f"{path}: '{found[0]}' must hold numbers (dtype {raw.dtype})")
    raw = raw.astype(np.float64)
    if not np.isfinite(raw).all():
        raise ProfileError(f"{path}: '{found[0]}' holds NaN or inf")
    return found[0], raw


def _mean_ignoring_zeros(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step (axis 1 of (samples, steps)): the mean over the non-zero entries, and how many there were."""
    ok = values != 0
    count = ok.sum(axis=0)
    total = np.where(ok, values, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), count.astype(np.float64)


def reference_fields(path, latent_shape: Sequence[int], model_class: str, metadata: dict) -> dict:
    """The keyword arguments of a :class:`~sencache.SensitivityProfile` for the authors' table at ``path``
    (see :meth:`~sencache.SensitivityProfile.from_reference`)."""
    if not model_class or not isinstance(model_class, str):
        raise ProfileError("from_reference needs model_class, the transformer's class name "
                           "(e.g. 'WanTransformer3DModel'), so the profile is refused on another model")
    table = read_reference_table(path, latent_shape)
    spread = {}
    if table.count_jx is not None:
        spread["count"] = table.count_jx
    if table.count_jt is not None and not np.array_equal(table.count_jx, table.count_jt):
        spread["count_jt"] = table.count_jt
    meta = {"model_class": model_class, "timestep_unit": "scheduler timesteps, 0-1000 (reference table)",
            "reference_table": table.conversion, **metadata}
    return {"timesteps": table.timesteps, "jx": table.jx, "jt": table.jt, "spread": spread, "metadata": meta}
