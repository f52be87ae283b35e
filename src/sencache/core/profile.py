"""SensitivityProfile: how sensitive a denoiser is to its inputs, per timestep.

For each timestep t of a calibration grid it stores ‖J_x‖(t) and ‖J_t‖(t), the mean secant
sensitivities of the denoiser output to the noisy latent and to the timestep. Both are in RMS units
(rms(Δoutput)/rms(Δx) and rms(Δoutput)/|Δt|), so a tolerance ε means the same at any resolution.
Timesteps are in the units the transformer receives (``metadata['timestep_unit']``), and
:meth:`lookup` interpolates linearly between grid points (clamped at the ends), so one profile
serves any step count or shift.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sencache.core.reference_table import read_reference_table
from sencache.errors import ProfileError, SenCacheError
from sencache.toolbox.files import write_json_atomic

FORMAT = "sencache-profile/1"


def model_config_hash(model: torch.nn.Module) -> str:
    """A short stable hash of a diffusers model's constructor config (private '_' keys ignored)."""
    config = getattr(model, "config", None)
    if config is None:
        return "unknown"
    items = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_class_name(model: torch.nn.Module) -> str:
    """The class name a profile records for ``model`` (checked by :meth:`SensitivityProfile.check_model`)."""
    return type(model).__name__


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
        self._validate()
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

    def _validate(self) -> None:
        n = len(self.timesteps)
        if n == 0:
            raise ProfileError("profile has no timesteps; run `sencache calibrate` to measure one")
        for name, values in [("jx", self.jx), ("jt", self.jt), *self.spread.items(), *self.curves.items()]:
            if len(values) != n:
                raise ProfileError(f"profile field '{name}' has {len(values)} entries but there are {n} timesteps")
        for name, values in [("timesteps", self.timesteps), ("jx", self.jx), ("jt", self.jt),
                             *self.spread.items(), *self.curves.items()]:
            if not all(math.isfinite(v) for v in values):
                raise ProfileError(f"profile field '{name}' holds NaN or inf; recalibrate the profile")
        # every curve and spread is a norm, a percentile of norms or a count: a negative one is a broken file
        for name, values in [("jx", self.jx), ("jt", self.jt), *self.spread.items(), *self.curves.items()]:
            if min(values) < 0:
                raise ProfileError(f"profile field '{name}' holds negative values (smallest {min(values):g}); "
                                   f"sensitivities are >= 0: recalibrate the profile")
        if max(self.jx) == 0 and max(self.jt) == 0:
            raise ProfileError("profile sensitivities are all 0, which would predict no change anywhere and reuse "
                               "every step; recalibrate the profile with `sencache calibrate`")
        if len(set(self.timesteps)) != n:
            raise ProfileError("profile timesteps must be distinct")
        _check_stored_eps(self.metadata)

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
        """Refuse timesteps the grid does not cover, or say how many it misses.

        Lookups clamp at the grid's ends, which is right for a step a little past them and silently wrong for a
        grid in other units (0-1 against 0-1000) or one measured on part of the range. Steps further than 5 % of
        the run's span outside the grid count as missed: more than half missed raises a ProfileError, fewer
        return a warning to show (None when all are covered)."""
        run = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu().numpy()
        if run.size == 0:
            return None
        lo, hi = float(self._t[0]), float(self._t[-1])
        tol = 0.05 * max(float(run.max() - run.min()), hi - lo, 1e-12)
        missed = int(np.sum((run < lo - tol) | (run > hi + tol)))
        if missed == 0:
            return None
        where = (f"{missed} of {run.size} timesteps of {what} ({run.min():g}..{run.max():g}) lie outside the "
                 f"profile's grid ({lo:g}..{hi:g})")
        if 2 * missed > run.size:
            raise ProfileError(f"{where}: the profile is in other timestep units or from another scheduler; "
                               f"recalibrate it on this pipeline with `sencache calibrate`")
        return f"sencache: {where}; their sensitivities are taken from the grid's nearest end"

    # --- compatibility ------------------------------------------------------------------------
    def check_model(self, model: torch.nn.Module, expert: str = "transformer") -> None:
        """Refuse a profile measured on another model class or config. ``expert`` names which of a pipeline's
        denoising transformers ``model`` is (Wan 2.2: ``"transformer_2"`` is the low-noise expert): a profile of
        a two-expert pipeline holds each expert's class and config in ``metadata["experts"]``."""
        experts = self.metadata.get("experts")
        if experts:
            if expert not in experts:
                raise ProfileError(f"this profile holds the experts {', '.join(experts)}, not {expert}; calibrate "
                                   f"this pipeline with `sencache calibrate`")
            want_cls, want_hash = experts[expert].get("model_class"), experts[expert].get("config_hash")
        elif expert != "transformer":
            raise ProfileError(
                f"this pipeline has a second denoising transformer ({expert}: Wan 2.2's low-noise expert) and the "
                f"profile holds one transformer's curve; measure both with `sencache calibrate` on the pipeline, or "
                f"join one profile per expert with SensitivityProfile.join_experts")
        else:
            want_cls, want_hash = self.metadata.get("model_class"), self.metadata.get("config_hash")
        have_cls = model_class_name(model)
        if want_cls and want_cls != have_cls:
            raise ProfileError(
                f"profile was calibrated for {want_cls} but the model is {have_cls}; "
                f"run `sencache calibrate` on this model"
            )
        have_hash = model_config_hash(model)
        if want_hash and have_hash != "unknown" and want_hash != have_hash:
            raise ProfileError(
                f"profile was calibrated for a {want_cls} with another config (hash {want_hash}, this model "
                f"{have_hash}); run `sencache calibrate` on this model"
            )

    @classmethod
    def join_experts(cls, parts: dict[str, "SensitivityProfile"],
                     boundary_timestep: float | None = None) -> "SensitivityProfile":
        """One profile for a pipeline whose experts serve disjoint timestep ranges (Wan 2.2: ``transformer`` at
        t >= the boundary, ``transformer_2`` below), from one profile per expert.

        Each part keeps its own grid points: with ``boundary_timestep`` (the pipeline's ``boundary_ratio`` ×
        ``num_train_timesteps``) the first expert's at t >= boundary and the others' below it; without it the
        parts' grids must not overlap. Curves and spreads present in every part are kept; stored trajectories
        are not (budget mode needs a calibration of the whole pipeline)."""
        if not isinstance(parts, dict) or len(parts) < 2 or \
                not all(isinstance(p, SensitivityProfile) for p in parts.values()):
            raise ProfileError("join_experts needs at least two profiles by expert name "
                               "({'transformer': ..., 'transformer_2': ...})")
        names = list(parts)
        keep: dict[str, np.ndarray] = {}
        for i, name in enumerate(names):
            t = np.asarray(parts[name].timesteps)
            if boundary_timestep is None:
                keep[name] = np.ones_like(t, dtype=bool)
            else:
                keep[name] = t >= boundary_timestep if i == 0 else t < boundary_timestep
            if not keep[name].any():
                raise ProfileError(f"the profile for {name} has no timestep on its side of the boundary "
                                   f"{boundary_timestep:g}; calibrate it on the steps that expert serves")
        ranges = {n: (float(np.asarray(parts[n].timesteps)[keep[n]].min()),
                      float(np.asarray(parts[n].timesteps)[keep[n]].max())) for n in names}
        spans = sorted(ranges.values())
        if any(lo <= prev_hi for (_, prev_hi), (lo, _) in zip(spans, spans[1:])):
            raise ProfileError(f"the experts' timestep ranges overlap ({ranges}); pass boundary_timestep (the "
                               f"pipeline's boundary_ratio x num_train_timesteps) to say which expert serves which")

        def joined(get) -> list[float]:
            return [v for n in names for v, k in zip(get(parts[n]), keep[n]) if k]

        def common(attr) -> dict:
            keys = set.intersection(*(set(getattr(parts[n], attr)) for n in names))
            return {key: joined(lambda p, key=key: getattr(p, attr)[key]) for key in sorted(keys)}

        first = parts[names[0]].metadata
        meta = {k: v for k, v in first.items() if k not in ("trajectories", "recommended_eps", "target_nfe", "budget",
                                                             "experts")}
        meta["experts"] = {n: {"model_class": parts[n].metadata.get("model_class"),
                               "config_hash": parts[n].metadata.get("config_hash"),
                               "timesteps": list(ranges[n])} for n in names}
        if boundary_timestep is not None:
            meta["boundary_timestep"] = float(boundary_timestep)
        return cls(joined(lambda p: p.timesteps), joined(lambda p: p.jx), joined(lambda p: p.jt),
                   spread=common("spread"), curves=common("curves"), **meta)

    # --- io -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON-able form (``format`` = ``sencache-profile/1``)."""
        return {
            "format": FORMAT,
            "timesteps": self.timesteps,
            "jx": self.jx,
            "jt": self.jt,
            "spread": self.spread,
            "curves": self.curves,
            "metadata": self.metadata,
        }

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
        return cls(table.timesteps, table.jx, table.jt, spread=spread, **meta)

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


def _check_stored_eps(metadata: dict) -> None:
    """A stored ``recommended_eps`` (the default rule's, or the closed loop's) must be a usable tolerance: a broken
    one would otherwise be replaced by a default ε in silence."""
    for where, meta in (("metadata", metadata), ("metadata.loop", metadata.get("loop"))):
        if not isinstance(meta, dict) or "recommended_eps" not in meta:
            continue
        eps = meta["recommended_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ProfileError(f"profile {where}.recommended_eps must be a number >= 0 (got {eps!r}); remove it or "
                               f"solve it again with sencache.budget.recommend(profile, target_nfe)")


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
