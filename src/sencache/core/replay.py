"""The SenCache rule replayed offline on stored uncached trajectories, and the ε that hits an NFE target.

With the pairwise distances D[j][k] = rms(x_k − x_j) of a calibration trajectory, the rule needs no model:
S(j → k) is :func:`sencache.core.change.predicted_change` of ‖J_x‖(t_j), D[j][k], ‖J_t‖(t_j) and |t_k − t_j|,
with the same warm-up, ``max_reuse``, ``final_steps`` and ε schedule as the online rule, in the same float64
arithmetic, so on an uncached trajectory it reproduces the online decisions exactly. The mean NFE is a step
function of ε; :func:`solve_eps` probes every plateau between its breakpoints at once and keeps the one
closest to the target (ties: the smaller ε), returning the plateau's geometric middle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sencache.core.change import forecast_change, guarded_forecast_change, predicted_change
from sencache.core.schedule import threshold, tied_eps_start
from sencache.core.trajectories import Trajectories, trajectories_of
from sencache.errors import SenCacheError


# --------------------------------------------------------------------------------------------
# the offline rule
# --------------------------------------------------------------------------------------------
def _thresholds(config, num_steps: int, eps: np.ndarray, eps_start: float | None) -> np.ndarray:
    """(T, E) thresholds of the rule at every step for every candidate eps, by the online rule's own
    :func:`~sencache.core.schedule.threshold` (``eps_start`` None: tied to each candidate)."""
    eps = np.asarray(eps, dtype=np.float64)
    start = tied_eps_start(eps) if eps_start is None else np.full_like(eps, float(eps_start))
    warm = config.warmup_steps(num_steps)
    return np.stack([np.broadcast_to(threshold(eps, start, k, num_steps, warm, config.eps_schedule), eps.shape)
                     for k in range(num_steps)])


def simulate_sample(config, timesteps: np.ndarray, dist: np.ndarray, eps, eps_start: float | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Replay the SenCache rule on one uncached trajectory for every ε in ``eps`` at once.

    Returns (computed (T, E) bool, score (T, E) float64 with NaN where the rule computes no S).
    ``eps_start`` None means tied to ε (ε/10), else fixed.
    """
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    T, E = timesteps.size, eps.size
    jx_t, jt_t = config.profile.lookup(torch.as_tensor(timesteps, dtype=torch.float64))
    jx, jt = jx_t.numpy(), jt_t.numpy()
    thr = _thresholds(config, T, eps, eps_start)
    jtt = _curvature(config, timesteps)
    computed = np.zeros((T, E), dtype=bool)
    score = np.full((T, E), np.nan)
    computed[0] = True
    ref = np.zeros(E, dtype=np.int64)
    prev = np.full(E, -1, dtype=np.int64)  # the refresh before ref (-1: none yet)
    run = np.zeros(E, dtype=np.int64)
    final_from = T - config.final_steps if config.final_steps > 0 else T
    for k in range(1, T):
        s = predicted_change(jx[ref], dist[ref, k], jt[ref], np.abs(timesteps[k] - timesteps[ref]))
        if jtt is not None:  # forecast="auto": the smaller of the hold and the linear-forecast error
            s1 = np.where(prev >= 0, forecast_change(jtt[ref], np.abs(timesteps[k] - timesteps[ref]),
                                                     np.abs(timesteps[k] - timesteps[np.maximum(prev, 0)])), np.inf)
            s1 = guarded_forecast_change(s1, s, getattr(config, "forecast_guard", None))
            s = np.where(s1 < s, s1, s)
        score[k] = s
        reuse = np.isfinite(s) & (s <= thr[k]) & (thr[k] > 0) & (run < config.max_reuse)  # as the online rule
        if k >= final_from:
            reuse[:] = False
        computed[k] = ~reuse
        prev = np.where(reuse, prev, ref)
        ref = np.where(reuse, ref, k)
        run = np.where(reuse, run + 1, 0)
    return computed, score


def _curvature(config, timesteps: np.ndarray) -> np.ndarray | None:
    """The profile's ‖d²f/dt²‖ on the grid when the rule forecasts by predicted error (forecast="auto")."""
    if getattr(config, "forecast", "hold") != "auto":
        return None
    return config.profile.lookup_curve("jtt", torch.as_tensor(timesteps, dtype=torch.float64)).numpy()


def _eps_dependent_breakpoints(config, traj: Trajectories, eps_start: float | None) -> np.ndarray:
    """Every ε at which some comparison S ≤ threshold(ε) can flip, over all stored trajectories."""
    T = traj.num_steps
    jx_t, jt_t = config.profile.lookup(torch.as_tensor(traj.timesteps, dtype=torch.float64))
    jx, jt = jx_t.numpy(), jt_t.numpy()
    warm = config.warmup_steps(T)
    final_from = T - config.final_steps if config.final_steps > 0 else T
    out = []
    gap = max(1, config.max_reuse)
    jtt = _curvature(config, traj.timesteps)
    for d in traj.dist:
        for k in range(1, min(T, final_from)):
            if k < warm and eps_start is not None:
                continue  # fixed threshold: does not move with eps
            g = threshold(1.0, tied_eps_start(1.0), k, T, warm, config.eps_schedule)  # threshold per unit of eps
            if g <= 0:
                continue
            j = np.arange(max(0, k - gap), k)
            s = predicted_change(jx[j], d[j, k], jt[j], np.abs(traj.timesteps[k] - traj.timesteps[j]))
            out.append(s[np.isfinite(s)] / g)
            guard = getattr(config, "forecast_guard", None)
            if jtt is not None and guard is not None:  # a guarded S₁ can take the value S / guard
                out.append(s[np.isfinite(s)] / guard / g)
            if jtt is not None:  # the linear forecast's error from every reachable (prev, ref) pair
                for r in j:
                    i = np.arange(max(0, r - gap - 1), r)
                    s1 = forecast_change(jtt[r], abs(traj.timesteps[k] - traj.timesteps[r]),
                                         np.abs(traj.timesteps[k] - traj.timesteps[i]))
                    out.append(s1[np.isfinite(s1)] / g)
    vals = np.unique(np.concatenate(out) if out else np.zeros(0))
    vals = vals[vals >= 0]
    if vals.size > 1:  # breakpoints equal up to rounding would leave a plateau with no room for a probe
        keep = np.concatenate([[True], np.diff(vals) > 1e-9 * vals[1:]])
        vals = vals[keep]
    return vals


@dataclass
class SimResult:
    """The replayed rule at one ε: mean NFE over the trajectories, NFE per trajectory and, per trajectory,
    whether each step computes.
    """
    eps: float
    nfe: float  # mean over trajectories
    per_sample: list[int]
    computed: list[list[bool]]


def simulate(config, eps: float | None = None, traj: Trajectories | None = None) -> SimResult:
    """The rule's schedule on every stored trajectory at ``eps`` (default: the config's own)."""
    traj = traj or trajectories_of(config.profile)
    eps = config.eps if eps is None else float(eps)
    eps_start = fixed_eps_start(config)
    per, comp = [], []
    for d in traj.dist:
        c, _ = simulate_sample(config, traj.timesteps, d, [eps], eps_start)
        per.append(int(c[:, 0].sum()))
        comp.append(c[:, 0].tolist())
    return SimResult(eps, float(np.mean(per)), per, comp)


def fixed_eps_start(config) -> float | None:
    """The config's eps_start if the user fixed it, else None (tied to eps: eps / 10)."""
    return None if getattr(config, "eps_start_tied", config.eps_start is None) else float(config.eps_start)


def solve_eps(config, target_nfe: float, traj: Trajectories | None = None, eps_start: float | None = None) -> dict:
    """The ε whose simulated mean NFE is closest to ``target_nfe`` (ties: smaller ε).

    ``eps_start`` None ties the warm-up threshold to ε/10; a number keeps it fixed.
    Returns a JSON-able dict: eps, simulated_nfe, target_nfe, per_sample_nfe, plateau [lo, hi), ...
    """
    traj = traj or trajectories_of(config.profile)
    T = traj.num_steps
    target = float(target_nfe)
    if not math.isfinite(target) or not 1.0 <= target <= T:
        raise SenCacheError(f"target NFE must be between 1 and the {T} calibration steps (got {target_nfe!r})")
    breaks = _eps_dependent_breakpoints(config, traj, eps_start)
    # one probe inside every plateau: below the first breakpoint, between neighbours, above the last
    if breaks.size == 0:
        probes, lows, highs = np.array([1.0]), np.array([0.0]), np.array([math.inf])
    else:
        lo_edge = breaks[0] / 2 if breaks[0] > 0 else 0.0
        mids = np.where(breaks[:-1] > 0, np.sqrt(breaks[:-1] * breaks[1:]), breaks[1:] / 2)
        probes = np.concatenate([[lo_edge], mids, [breaks[-1] * 2 if breaks[-1] > 0 else 1.0]])
        lows = np.concatenate([[0.0], breaks])
        highs = np.concatenate([breaks, [math.inf]])
    nfe = np.zeros(probes.size)
    per_sample = np.zeros((len(traj.dist), probes.size), dtype=np.int64)
    for i, d in enumerate(traj.dist):
        computed, _ = simulate_sample(config, traj.timesteps, d, probes, eps_start)
        per_sample[i] = computed.sum(axis=0)
    nfe = per_sample.mean(axis=0)
    miss = np.abs(nfe - target)
    best = int(np.flatnonzero(miss == miss.min())[0])  # probes ascend: the first is the smaller eps
    return {
        "eps": float(probes[best]),
        "simulated_nfe": float(nfe[best]),
        "target_nfe": target,
        "num_steps": T,
        "per_sample_nfe": [int(v) for v in per_sample[:, best]],
        "plateau": [float(lows[best]), float(highs[best]) if math.isfinite(highs[best]) else None],
        "reachable_nfe": [float(nfe.min()), float(nfe.max())],
        "trajectories": len(traj.dist),
        "eps_start_tied": eps_start is None,
        "max_reuse": config.max_reuse,
        "final_steps": config.final_steps,
        "warmup_fraction": config.warmup_fraction,
        "eps_schedule": config.eps_schedule.to_dict() if config.eps_schedule is not None else None,
        "forecast": getattr(config, "forecast", "hold"),
        "forecast_guard": getattr(config, "forecast_guard", None),
        "note": "simulated on uncached calibration trajectories; reuse perturbs real ones (see measure_transfer)",
    }
