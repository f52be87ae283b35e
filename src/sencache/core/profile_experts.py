"""One profile for a pipeline with two denoising experts (Wan 2.2), joined from one profile per expert."""

from __future__ import annotations

import numpy as np

from sencache.errors import ProfileError


def join_expert_parts(parts: dict, boundary_timestep: float | None = None) -> tuple:
    """One profile for a pipeline whose experts serve disjoint timestep ranges (Wan 2.2: ``transformer`` at
    t >= the boundary, ``transformer_2`` below), from one profile per expert.

    Each part keeps its own grid points: with ``boundary_timestep`` (the pipeline's ``boundary_ratio`` ×
    ``num_train_timesteps``) the first expert's at t >= boundary and the others' below it; without it the
    parts' grids must not overlap. Curves and spreads present in every part are kept; stored trajectories
    are not (budget mode needs a calibration of the whole pipeline).

    Returns (timesteps, jx, jt, spread, curves, metadata) of the joined profile."""
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
    return (joined(lambda p: p.timesteps), joined(lambda p: p.jx), joined(lambda p: p.jt), common("spread"),
            common("curves"), meta)
