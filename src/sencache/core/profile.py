"""SensitivityProfile: how sensitive a denoiser is to its inputs, per timestep.

For each timestep t of a calibration grid it stores ‖J_x‖(t) and ‖J_t‖(t), the mean secant
sensitivities of the denoiser output to the noisy latent and to the timestep. Both are in RMS units
(rms(Δoutput)/rms(Δx) and rms(Δoutput)/|Δt|), so a tolerance ε means the same at any resolution.
Timesteps are in the units the transformer receives (``metadata['timestep_unit']``), and
:meth:`lookup` interpolates linearly between grid points (clamped at the ends), so one profile
serves any step count or shift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sencache.core.profile_checks import (  # noqa: F401  (the hashes: imported from here across the package)
    check_covers,
    check_fields,
    check_model,
    model_class_name,
    model_config_hash,
)
from sencache.core.profile_experts import join_expert_parts
from sencache.core.reference_table import reference_fields
from sencache.errors import ProfileError, SenCacheError
from sencache.toolbox.files import write_json_atomic

FORMAT = "sencache-profile/1"


def _as_float_list(name: str, values) -> list[float]:
    try:
        out = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"profile field '{name}' must be a list of numbers ({exc})") from None
    return out


@dataclass
class SensitivityProfile:
    """How sensitive a denoiser is to its inputs, per timestep of a calibration grid.

    Args:
        timesteps: the grid, in the units the transformer receives (``metadata['timestep_unit']``).
        jx: ‖J_x‖(t), mean secant sensitivity to the noisy latent: rms(Δoutput) / rms(Δx), unit-free.
        jt: ‖J_t‖(t), mean secant sensitivity to the timestep: rms(Δoutput) / |Δt|, per timestep unit.
        spread: per-timestep percentiles over the calibration samples (``jx_p10``, ``jt_p90``, ``count``, ...).
        curves: extra curves on the same grid (``jt_raw``, ``jt_smooth``).
        **metadata: how it was measured (model class and config hash, prompts, seeds, steps, stored
            trajectories for budget mode, ...); saved with the profile.
    """
    timesteps: list[float]
    jx: list[float]
    jt: list[float]
    spread: dict[str, list[float]] = field(default_factory=dict)  # e.g. jx_p10, jx_p50, jx_p90, count
    curves: dict[str, list[float]] = field(default_factory=dict)  # extra curves, e.g. jt_raw, jt_guided
    metadata: dict[str, Any] = field(default_factory=dict)

    def __init__(self, timesteps, jx, jt, spread=None, curves=None, **metadata):
        self.timesteps = _as_float_list("timesteps", timesteps)
        self.jx = _as_float_list("jx", jx)
        self.jt = _as_float_list("jt", jt)
        self.spread = {k: _as_float_list(k, v) for k, v in _as_dict("spread", spread).items()}
        self.curves = {k: _as_float_list(k, v) for k, v in _as_dict("curves", curves).items()}
        meta = dict(metadata.pop("metadata", {}) or {})
        meta.update(metadata)
        self.metadata = meta
        check_fields(self)
        order = np.argsort(self.timesteps)
        self._t = torch.tensor(np.asarray(self.timesteps)[order], dtype=torch.float64)
        self._jx = torch.tensor(np.asarray(self.jx)[order], dtype=torch.float64)
        self._jt = torch.tensor(np.asarray(self.jt)[order], dtype=torch.float64)
        # lookups at the same timesteps repeat every generation (one grid): remember them
        self._memo: dict[tuple, torch.Tensor] = {}

    def _memoised(self, key: tuple, compute) -> torch.Tensor:
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) > 4096:  # many grids or batches: start over rather than grow
                self._memo.clear()
            value = self._memo[key] = compute()
        return value.clone()  # callers may keep and edit what they get

    # --- lookup -------------------------------------------------------------------------------
    def lookup(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """‖J_x‖ and ‖J_t‖ at timestep(s) t: linear interpolation, clamped outside the grid."""
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        key = tuple(tt.tolist())
        return (self._memoised(("jx", *key), lambda: interpolate(tt, self._t, self._jx)),
                self._memoised(("jt", *key), lambda: interpolate(tt, self._t, self._jt)))

    def lookup_curve(self, name: str, t) -> torch.Tensor:
        """The extra curve ``name`` (e.g. ``"jtt"``) at timestep(s) t, interpolated like :meth:`lookup`."""
        if name not in self.curves:
            raise ProfileError(f"this profile has no '{name}' curve; recalibrate it with `sencache calibrate` "
                               f"(this version measures it)")
        curve = self.curves[name]
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)

        def compute():
            values = torch.tensor(np.asarray(curve)[np.argsort(self.timesteps)], dtype=torch.float64)
            return interpolate(tt, self._t, values)

        return self._memoised((name, id(curve), len(curve), *tt.tolist()), compute)

    def check_covers(self, timesteps, what: str = "this run") -> str | None:
        """Refuse timesteps the grid does not cover, or say how many it misses (see
        :func:`sencache.core.profile_checks.check_covers`)."""
        return check_covers(self._t, timesteps, what)

    def check_model(self, model: torch.nn.Module, expert: str = "transformer") -> None:
        """Refuse a profile measured on another model class or config; ``expert`` names which of a pipeline's
        denoising transformers ``model`` is (see :func:`sencache.core.profile_checks.check_model`)."""
        check_model(self.metadata, model, expert)

    @classmethod
    def join_experts(cls, parts: dict[str, "SensitivityProfile"],
                     boundary_timestep: float | None = None) -> "SensitivityProfile":
        """One profile for a pipeline whose experts serve disjoint timestep ranges (Wan 2.2: ``transformer`` at
        t >= ``boundary_timestep``, ``transformer_2`` below), from one profile per expert (see
        :func:`sencache.core.profile_experts.join_expert_parts`)."""
        if not isinstance(parts, dict) or len(parts) < 2 or \
                not all(isinstance(p, SensitivityProfile) for p in parts.values()):
            raise ProfileError("join_experts needs at least two profiles by expert name "
                               "({'transformer': ..., 'transformer_2': ...})")
        timesteps, jx, jt, spread, curves, meta = join_expert_parts(parts, boundary_timestep)
        return cls(timesteps, jx, jt, spread=spread, curves=curves, **meta)

    # --- io -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON-able form (``format`` = ``sencache-profile/1``)."""
        return {"format": FORMAT, "timesteps": self.timesteps, "jx": self.jx, "jt": self.jt, "spread": self.spread,
                "curves": self.curves, "metadata": self.metadata}

    def save(self, path) -> Path:
        """Write the profile as JSON, atomically (a half-written file never replaces a good one)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityProfile":
        """The profile in ``data`` (as :meth:`to_dict` wrote it); a ProfileError says what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProfileError(f"not a sencache profile (expected format '{FORMAT}')")
        for key in ("timesteps", "jx", "jt"):
            if key not in data:
                raise ProfileError(f"profile is missing '{key}'; recalibrate it with `sencache calibrate`")
        return cls(
            data["timesteps"], data["jx"], data["jt"],
            spread=data.get("spread") or {}, curves=data.get("curves") or {}, metadata=data.get("metadata") or {},
        )

    @classmethod
    def from_reference(cls, path, latent_shape, model_class: str, **metadata) -> "SensitivityProfile":
        """A profile from the SenCache authors' ``.npz`` sensitivity table (e.g. ``sensitivity_wan21.npz``).

        ``latent_shape`` = (C, F, H, W) of the latent the table was measured on (Wan 2.1 at 832×480×81:
        (16, 21, 60, 104); see :data:`sencache.core.reference_table.REFERENCE_LATENTS`): their J_t is an L2
        norm over it, so it is divided by √(C·F·H·W) into RMS units; J_x is unchanged. A raw
        (samples, steps, 2) array is averaged leaving out its zeros (failed measurements). ``model_class``
        (e.g. ``"WanTransformer3DModel"``) is checked against the model at enable time. The conversion goes
        into ``metadata["reference_table"]``. Such a profile stores no trajectories, so budget mode needs
        ``sencache calibrate``; a fixed ε or a preset works with it.
        """
        return cls(**reference_fields(path, latent_shape, model_class, metadata))

    @classmethod
    def load(cls, path) -> "SensitivityProfile":
        """Read a profile JSON file; a ProfileError says what is wrong (missing, not JSON, malformed, NaN)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise ProfileError(f"profile {path} is not valid JSON ({exc}); recalibrate it") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"SensitivityProfile({len(self.timesteps)} timesteps {min(self.timesteps):g}..{max(self.timesteps):g}, "
            f"model={m.get('model_class', '?')}, samples={m.get('num_samples', '?')})"
        )


def _as_dict(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"profile field '{name}' must be a mapping of name -> list of numbers "
                           f"(got {type(value).__name__}); recalibrate the profile")
    return value


def _reject_constant(name: str):
    raise SenCacheError(f"non-finite number {name}")


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``fp`` at ``x`` over the ascending grid ``xp``, clamped at the ends (float64)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = (x - x0) / (x1 - x0)
    return fp[idx - 1] + w * (fp[idx] - fp[idx - 1])
