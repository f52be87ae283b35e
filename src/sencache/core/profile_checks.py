"""The checks a sensitivity profile passes before it is used: its fields, its grid against a run's timesteps, and
the model it was measured on. Each raises a :class:`~sencache.errors.ProfileError` that says what to do."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch

from sencache.errors import ProfileError


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


def check_fields(profile) -> None:
    """Refuse a profile whose curves are missing, of the wrong length, non-finite, negative or all zero."""
    n = len(profile.timesteps)
    if n == 0:
        raise ProfileError("profile has no timesteps; run `sencache calibrate` to measure one")
    for name, values in [("jx", profile.jx), ("jt", profile.jt), *profile.spread.items(), *profile.curves.items()]:
        if len(values) != n:
            raise ProfileError(f"profile field '{name}' has {len(values)} entries but there are {n} timesteps")
    for name, values in [("timesteps", profile.timesteps), ("jx", profile.jx), ("jt", profile.jt),
                         *profile.spread.items(), *profile.curves.items()]:
        if not all(math.isfinite(v) for v in values):
            raise ProfileError(f"profile field '{name}' holds NaN or inf; recalibrate the profile")
    # every curve and spread is a norm, a percentile of norms or a count: a negative one is a broken file
    for name, values in [("jx", profile.jx), ("jt", profile.jt), *profile.spread.items(), *profile.curves.items()]:
        if min(values) < 0:
            raise ProfileError(f"profile field '{name}' holds negative values (smallest {min(values):g}); "
                               f"sensitivities are >= 0: recalibrate the profile")
    if max(profile.jx) == 0 and max(profile.jt) == 0:
        raise ProfileError("profile sensitivities are all 0, which would predict no change anywhere and reuse "
                           "every step; recalibrate the profile with `sencache calibrate`")
    if len(set(profile.timesteps)) != n:
        raise ProfileError("profile timesteps must be distinct")
    check_stored_eps(profile.metadata)


def check_stored_eps(metadata: dict) -> None:
    """A stored ``recommended_eps`` (the default rule's, or the closed loop's) must be a usable tolerance: a broken
    one would otherwise be replaced by a default ε in silence."""
    for where, meta in (("metadata", metadata), ("metadata.loop", metadata.get("loop"))):
        if not isinstance(meta, dict) or "recommended_eps" not in meta:
            continue
        eps = meta["recommended_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ProfileError(f"profile {where}.recommended_eps must be a number >= 0 (got {eps!r}); remove it or "
                               f"solve it again with sencache.budget.recommend(profile, target_nfe)")


def check_covers(grid: torch.Tensor, timesteps, what: str = "this run") -> str | None:
    """Refuse timesteps the ascending profile ``grid`` does not cover, or say how many it misses.

    Lookups clamp at the grid's ends, which is right for a step a little past them and silently wrong for a
    grid in other units (0-1 against 0-1000) or one measured on part of the range. Steps further than 5 % of
    the run's span outside the grid count as missed: more than half missed raises a ProfileError, fewer
    return a warning to show (None when all are covered)."""
    run = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu().numpy()
    if run.size == 0:
        return None
    lo, hi = float(grid[0]), float(grid[-1])
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


def check_model(metadata: dict, model: torch.nn.Module, expert: str = "transformer") -> None:
    """Refuse a profile measured on another model class or config. ``expert`` names which of a pipeline's
    denoising transformers ``model`` is (Wan 2.2: ``"transformer_2"`` is the low-noise expert): a profile of
    a two-expert pipeline holds each expert's class and config in ``metadata["experts"]``."""
    experts = metadata.get("experts")
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
        want_cls, want_hash = metadata.get("model_class"), metadata.get("config_hash")
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
