"""Budget mode: pick SenCache's ε for a target NFE by simulating the rule on calibration trajectories.

    config = SenCacheConfig(profile, target_nfe=20)        # or target_speedup=2.5 (NFE = T / 2.5)
    config.eps, config.budget["simulated_nfe"]

How it works. ``sencache calibrate`` stores, for each calibration trajectory (≤ 8), the pairwise RMS
distances D[j][k] = rms(x_k − x_j) between the latents the transformer received at grid steps j and
k, and the grid's timesteps (``profile.metadata["trajectories"]``, upper triangle, float32 values
written with their shortest decimal so they load back bit-exactly). With D, ‖J_x‖ and ‖J_t‖ the
SenCache rule can be replayed offline without the model:

    S(j → k) = ‖J_x‖(t_j) · D[j][k] + ‖J_t‖(t_j) · |t_k − t_j|        (j = last refresh)

with the same warm-up, ``max_reuse``, ``final_steps`` and ε schedule as the online rule, in the same
float64 arithmetic, so on an *uncached* trajectory it reproduces the online decisions exactly. For a
given config the mean NFE over the trajectories is a step function of ε that only changes where ε
crosses one of the finitely many values S(j → k) / g(k) (g: the schedule's factor; ×10 in the
warm-up when ε_start = ε/10). :func:`solve_eps` therefore simulates one ε inside every plateau
between consecutive breakpoints (all at once, vectorised over ε) and keeps the plateau whose mean
NFE is closest to the target (ties: the smaller ε), returning the geometric middle of that plateau
(the choice with the most margin on either side).

Limits. The simulation follows the *uncached* trajectories: a real reuse perturbs the latents it is
measured on, so online decisions after the first reuse can differ. How well the budget transfers is
an empirical question; :func:`measure_transfer` measures the achieved NFE on held-out prompts. The
per-sample correction (``correction=True``) is not simulated (its factor is taken as 1).

This module also measures the normaliser the per-sample correction needs
(:func:`calibrate_correction`) and compares ε schedules at equal NFE (:func:`compare_schedules`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .errors import SenCacheError

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
    from .rules.base import rms_per_sample

    n = len(latents)
    d = np.zeros((n, n), dtype=np.float64)
    for k in range(n):
        for j in range(k):
            x = latents[k]
            v = float(rms_per_sample(x - latents[j].to(x.device, x.dtype)).double().cpu()[0])
            d[j, k] = d[k, j] = v
    return d


def trajectory_metadata(timesteps: Sequence[float], dists: Sequence[np.ndarray], prompts=None, seeds=None) -> dict:
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
    timesteps: np.ndarray  # (T,) float64, the grid in transformer-input units
    dist: list[np.ndarray]  # per sample (T, T)
    prompts: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
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
    return Trajectories(ts, dist, list(info.get("prompts") or []))


# --------------------------------------------------------------------------------------------
# the offline rule
# --------------------------------------------------------------------------------------------
def _thresholds(config, num_steps: int, eps: np.ndarray, eps_start: float | None) -> np.ndarray:
    """(T, E) thresholds of the rule at every step for every candidate eps, as ``config.eps_at`` computes them."""
    eps = np.asarray(eps, dtype=np.float64)
    warm = config.warmup_steps(num_steps)
    rows = []
    for k in range(num_steps):
        if k < warm:
            if eps_start is not None:
                rows.append(np.full_like(eps, float(eps_start)))
            else:  # tied: eps / 10 (inf stays inf), exactly as SenCacheConfig computes it
                rows.append(np.where(np.isfinite(eps), eps / 10, eps))
        elif config.eps_schedule is not None:
            rows.append(eps * config.eps_schedule.factor(k, num_steps))
        else:
            rows.append(eps.copy())
    return np.stack(rows)


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
    computed = np.zeros((T, E), dtype=bool)
    score = np.full((T, E), np.nan)
    computed[0] = True
    ref = np.zeros(E, dtype=np.int64)
    run = np.zeros(E, dtype=np.int64)
    final_from = T - config.final_steps if config.final_steps > 0 else T
    for k in range(1, T):
        s = jx[ref] * dist[ref, k] + jt[ref] * np.abs(timesteps[k] - timesteps[ref])
        score[k] = s
        reuse = np.isfinite(s) & (s <= thr[k]) & (run < config.max_reuse)
        if k >= final_from:
            reuse[:] = False
        computed[k] = ~reuse
        ref = np.where(reuse, ref, k)
        run = np.where(reuse, run + 1, 0)
    return computed, score


def _eps_dependent_breakpoints(config, traj: Trajectories, eps_start: float | None) -> np.ndarray:
    """Every ε at which some comparison S ≤ threshold(ε) can flip, over all stored trajectories."""
    T = traj.num_steps
    jx_t, jt_t = config.profile.lookup(torch.as_tensor(traj.timesteps, dtype=torch.float64))
    jx, jt = jx_t.numpy(), jt_t.numpy()
    warm = config.warmup_steps(T)
    final_from = T - config.final_steps if config.final_steps > 0 else T
    out = []
    gap = max(1, config.max_reuse)
    for d in traj.dist:
        for k in range(1, min(T, final_from)):
            if k < warm:
                if eps_start is not None:
                    continue  # fixed threshold: does not move with eps
                g = 0.1
            elif config.eps_schedule is not None:
                g = config.eps_schedule.factor(k, T)
            else:
                g = 1.0
            if g <= 0:
                continue
            j = np.arange(max(0, k - gap), k)
            s = jx[j] * d[j, k] + jt[j] * np.abs(traj.timesteps[k] - traj.timesteps[j])
            out.append(s[np.isfinite(s)] / g)
    vals = np.unique(np.concatenate(out) if out else np.zeros(0))
    vals = vals[vals >= 0]
    if vals.size > 1:  # breakpoints equal up to rounding would leave a plateau with no room for a probe
        keep = np.concatenate([[True], np.diff(vals) > 1e-9 * vals[1:]])
        vals = vals[keep]
    return vals


@dataclass
class SimResult:
    eps: float
    nfe: float  # mean over trajectories
    per_sample: list[int]
    computed: list[list[bool]]


def simulate(config, eps: float | None = None, traj: Trajectories | None = None) -> SimResult:
    """The rule's schedule on every stored trajectory at ``eps`` (default: the config's own)."""
    traj = traj or trajectories_of(config.profile)
    eps = config.eps if eps is None else float(eps)
    eps_start = _fixed_eps_start(config)
    per, comp = [], []
    for d in traj.dist:
        c, _ = simulate_sample(config, traj.timesteps, d, [eps], eps_start)
        per.append(int(c[:, 0].sum()))
        comp.append(c[:, 0].tolist())
    return SimResult(eps, float(np.mean(per)), per, comp)


def _fixed_eps_start(config) -> float | None:
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
        "note": "simulated on uncached calibration trajectories; reuse perturbs real ones (see measure_transfer)",
    }


def resolve_budget(config) -> None:
    """Budget mode for a :class:`~sencache.SenCacheConfig` (called from its ``__post_init__``)."""
    import logging

    if config.target_nfe is not None and config.target_speedup is not None:
        raise SenCacheError("give target_nfe or target_speedup, not both")
    traj = trajectories_of(config.profile)
    T = traj.num_steps
    if config.target_speedup is not None:
        x = config.target_speedup
        if not isinstance(x, (int, float)) or not math.isfinite(x) or x < 1:
            raise SenCacheError(f"target_speedup must be a number >= 1 (got {x!r})")
        target = T / float(x)
    else:
        target = config.target_nfe
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise SenCacheError(f"target_nfe must be a number (got {target!r})")
    given = config.eps_start
    result = solve_eps(config, target, traj, eps_start=given)
    config.eps = result["eps"]
    result["eps_start_given"] = given is not None
    config.budget = result
    if abs(result["simulated_nfe"] - target) > 0.5:
        lo, hi = result["reachable_nfe"]
        logging.getLogger("sencache").warning(
            f"sencache: target NFE {target:g} is out of reach with max_reuse={config.max_reuse}, "
            f"final_steps={config.final_steps} (simulated NFE spans {lo:g}..{hi:g}); using eps={config.eps:.4g} "
            f"(simulated NFE {result['simulated_nfe']:g})")


def recommend(profile, target_nfe: float, **config_kwargs) -> dict:
    """Solve ε for ``target_nfe`` with the default rule settings and store it in ``profile.metadata``
    (``recommended_eps``, ``target_nfe``, ``budget``). Returns the budget dict."""
    from .rules.sencache import SenCacheConfig

    config = SenCacheConfig(profile, target_nfe=float(target_nfe), **config_kwargs)
    budget = dict(config.budget)
    profile.metadata["recommended_eps"] = config.eps
    profile.metadata["target_nfe"] = float(target_nfe)
    profile.metadata["budget"] = budget
    return budget


def recommended_eps(profile, default: float | None = None) -> float | None:
    """The profile's ``recommended_eps`` for the default rule, or ``default`` when it has none.

    A profile written before the default ε schedule changed holds an ε solved for another schedule, which
    would miss its NFE target; when it still holds its calibration trajectories, ε is solved again here for
    the stored ``target_nfe`` (an offline replay, no model call), with a log line saying so."""
    import logging

    from .rules.sencache import DEFAULT_EPS_SCHEDULE, SenCacheConfig, as_schedule

    meta = profile.metadata
    eps = meta.get("recommended_eps")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        return default
    current = as_schedule(DEFAULT_EPS_SCHEDULE).to_dict()
    solved_for = (meta.get("budget") or {}).get("eps_schedule", current)
    target = meta.get("target_nfe")
    if solved_for == current or not isinstance(target, (int, float)) or "trajectories" not in meta:
        return float(eps)
    eps = SenCacheConfig(profile, target_nfe=float(target)).eps
    logging.getLogger("sencache").info(
        "the profile's recommended_eps was solved for eps schedule %s; solved again for %s at target NFE %g: eps %.4g",
        (solved_for or {}).get("name", "constant"), current["name"], target, eps)
    return float(eps)


# --------------------------------------------------------------------------------------------
# transfer to held-out prompts
# --------------------------------------------------------------------------------------------
def measure_nfe(pipe, config, prompts: Sequence[str], seeds: Sequence[int] = (0,), num_inference_steps: int = 50,
                guidance_scale: float = 5.0, call_kwargs: dict | None = None) -> list[int]:
    """The NFE of a cached generation per prompt x seed (from the adapter's trace). ``call_kwargs`` go to
    the pipeline call (e.g. height, width, num_frames)."""
    from . import hooks
    from .generation import generate
    from .methods import quiet_sencache

    out = []
    session = hooks.enable(pipe, config)
    try:
        for p in prompts:
            for s in seeds:
                with quiet_sencache():
                    generate(pipe, p, int(s), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             **(call_kwargs or {}))
                out.append(int(session.summary()["nfe"]))
    finally:
        hooks.disable(pipe)
    return out


def measure_transfer(pipe, profile, targets: Sequence[float], prompts: Sequence[str], seeds: Sequence[int] = (0,),
                     guidance_scale: float = 5.0, call_kwargs: dict | None = None, **config_kwargs) -> list[dict]:
    """For every target NFE: the ε budget mode picks, its simulated NFE, and the NFE achieved on ``prompts``
    (which should be held out: not the profile's calibration prompts)."""
    from .baseline_calibration import check_disjoint
    from .rules.sencache import SenCacheConfig

    if profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")
    T = trajectories_of(profile).num_steps
    rows = []
    for target in targets:
        config = SenCacheConfig(profile, target_nfe=float(target), **config_kwargs)
        nfes = measure_nfe(pipe, config, prompts, seeds, T, guidance_scale, call_kwargs)
        rows.append({"target_nfe": float(target), "eps": config.eps, "simulated_nfe": config.budget["simulated_nfe"],
                     "achieved_nfe": float(np.mean(nfes)), "achieved_per_run": nfes,
                     "max_abs_error": float(max(abs(n - target) for n in nfes))})
    return rows


# --------------------------------------------------------------------------------------------
# the per-sample correction's normaliser
# --------------------------------------------------------------------------------------------
@dataclass
class _Track:
    latents: list = field(default_factory=list)  # cond branch, per step
    timesteps: list = field(default_factory=list)
    residuals: list = field(default_factory=list)


class _TrackRule:
    """Never reuses; keeps the decider branch's latent, timestep and residual at every step (batch row 0)."""

    name = "track"

    def __init__(self, track: _Track):
        self.track = track

    def new_state(self, batch_size: int) -> int:
        self.track.latents.clear()
        self.track.timesteps.clear()
        self.track.residuals.clear()
        return batch_size

    def decide(self, state, inp):
        from .rules.base import Decision

        self.track.latents.append(inp.latent.detach()[:1].clone())
        self.track.timesteps.append(float(inp.timestep.reshape(-1)[0]))
        return Decision(reuse=torch.zeros(state, dtype=torch.bool), score=None, eps=math.nan, reason=["track"] * state)

    def observe_refresh(self, state, inp, rows, residual) -> None:
        if residual is not None:
            self.track.residuals.append(residual.detach()[:1].float().clone())


@dataclass(frozen=True)
class _TrackConfig:
    track: _Track

    def build_rule(self) -> _TrackRule:
        return _TrackRule(self.track)


def track_uncached(pipe, prompt: str, seed: int, num_inference_steps: int, guidance_scale: float = 5.0,
                   call_kwargs: dict | None = None) -> _Track:
    """One uncached generation through the adapter, keeping latents, timesteps and cond residuals per step."""
    from . import hooks
    from .generation import generate
    from .methods import quiet_sencache

    track = _Track()
    hooks.enable(pipe, _TrackConfig(track))
    try:
        with quiet_sencache():
            generate(pipe, prompt, int(seed), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                     **(call_kwargs or {}))
    finally:
        hooks.disable(pipe)
    if len(track.residuals) != len(track.latents):
        raise SenCacheError("the adapter reported fewer residuals than steps; cannot measure the correction normaliser")
    return track


def correction_ratios(profile, track: _Track, window: int) -> tuple[np.ndarray, list[list[float | None]]]:
    """Per reference step j and gap g = 1..window: rms(r_(j+g) − r_j) / S(j → j+g) on one uncached
    trajectory (None where j + g is past the end or S is 0)."""
    from .rules.base import rms_per_sample

    ts = np.asarray(track.timesteps, dtype=np.float64)
    jx_t, jt_t = profile.lookup(torch.as_tensor(ts))
    jx, jt = jx_t.numpy(), jt_t.numpy()
    T = ts.size
    out = []
    for j in range(T - 1):
        vals: list[float | None] = []
        for k in range(j + 1, j + window + 1):
            if k >= T:
                vals.append(None)
                continue
            x = track.latents[k]
            dx = float(rms_per_sample(x - track.latents[j].to(x.device, x.dtype)).double()[0])
            s = jx[j] * dx + jt[j] * abs(ts[k] - ts[j])
            dr = float(rms_per_sample(track.residuals[k] - track.residuals[j]).double()[0])
            vals.append(dr / s if s > 0 and math.isfinite(s) and dr > 0 else None)
        out.append(vals)
    return ts[:-1], out


def calibrate_correction(pipe, profile, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                         num_inference_steps: int | None = None, guidance_scale: float = 5.0, window: int = 4,
                         progress: bool = True, call_kwargs: dict | None = None) -> dict:
    """Measure ρ̄(t, g), the typical rms(Δ residual) / S of uncached intervals of g = 1..``window`` steps
    starting at t, and store it in ``profile.metadata["correction"]`` (what
    ``SenCacheConfig(correction=True)`` divides by). Each entry is the geometric median (exp of the
    median log) over the runs. Use calibration prompts (never evaluation prompts). Returns the dict.
    """
    from tqdm.auto import tqdm

    T = int(num_inference_steps or profile.metadata.get("num_inference_steps") or 50)
    runs = [(p, int(s)) for p in prompts for s in seeds]
    if not runs:
        raise SenCacheError("calibrate_correction needs at least one prompt and seed")
    if not isinstance(window, int) or window < 1:
        raise SenCacheError(f"window must be an integer >= 1 (got {window!r})")
    per_step: list[list[float]] | None = None
    grid = None
    for p, s in tqdm(runs, desc="correction normaliser", disable=not progress, leave=False):
        track = track_uncached(pipe, p, s, T, guidance_scale, call_kwargs)
        ts, ratios = correction_ratios(profile, track, window)
        if per_step is None:
            per_step, grid = [[[] for _ in range(window)] for _ in ratios], ts
        for acc, vals in zip(per_step, ratios):
            for g, v in enumerate(vals):
                if v is not None:
                    acc[g].append(v)
    table = np.full((len(per_step), window), np.nan)  # (reference step, gap) geometric medians
    p10, p90 = table.copy(), table.copy()
    for j, by_gap in enumerate(per_step):
        for g, vals in enumerate(by_gap):
            if vals:
                logs = np.log(np.asarray(vals))
                table[j, g] = np.exp(np.median(logs))
                p10[j, g], p90[j, g] = np.exp(np.percentile(logs, 10)), np.exp(np.percentile(logs, 90))
    for g in range(window):  # steps too close to the end for a long gap: that gap's median over the grid
        col = table[:, g]
        if np.isfinite(col).any():
            fill = np.exp(np.nanmedian(np.log(col)))
        else:
            fill = table[:, g - 1] if g else 1.0
        table[:, g] = np.where(np.isfinite(col), col, fill)
    info = {
        "timesteps": [float(t) for t in grid],
        "ratio": [[float(v) for v in row] for row in table],
        "p10": [[float(v) if np.isfinite(v) else None for v in row] for row in p10],
        "p90": [[float(v) if np.isfinite(v) else None for v in row] for row in p90],
        "window": int(window),
        "num_inference_steps": T,
        "prompts": [p for p, _ in runs],
        "seeds": [s for _, s in runs],
        "units": "ratio[j][g-1] = rms(residual_(j+g) - residual_j) / S(j -> j+g) on uncached trajectories, "
                 "geometric median over runs",
    }
    profile.metadata["correction"] = info
    return info


# --------------------------------------------------------------------------------------------
# variants of the rule at equal NFE: ε schedules, the per-sample correction
# --------------------------------------------------------------------------------------------
def compare_variants(pipe, profile, prompts: Sequence[str], target_nfe: float, variants: dict,
                     seeds: Sequence[int] = (0,), baseline: str | None = None, guidance_scale: float = 5.0,
                     use_lpips: bool = False, progress: bool = True, num_inference_steps: int | None = None,
                     call_kwargs: dict | None = None, **config_kwargs) -> dict:
    """Variants of SenCache at equal (simulated) NFE, against the uncached reference on held-out ``prompts``.

    ``variants`` maps a name to SenCacheConfig keyword arguments (e.g. ``{"eps_schedule": "rising"}``,
    ``{"correction": True}``); every variant gets its ε from budget mode for ``target_nfe``. Returns per
    variant: eps, simulated and achieved NFE, PSNR / SSIM (/ LPIPS) means and per run; the winner by
    mean PSNR and its margin over ``baseline`` (default: the first variant). Budget mode does not
    simulate the correction, so check ``nfe_spread`` before reading a PSNR difference as a win.
    """
    from .baseline_calibration import check_disjoint
    from .rules.sencache import SenCacheConfig

    if not variants:
        raise SenCacheError("no variants to compare")
    if profile.metadata.get("prompts"):
        check_disjoint(profile.metadata["prompts"], prompts, "the sensitivity profile's calibration")
    T = trajectories_of(profile).num_steps
    if num_inference_steps is not None and int(num_inference_steps) != T:
        raise SenCacheError(f"the profile's trajectories have {T} steps, so budget mode can only pick eps for {T}; "
                            f"recalibrate with --steps {num_inference_steps} or compare at {T} steps")
    baseline = baseline or next(iter(variants))
    if baseline not in variants:
        raise SenCacheError(f"baseline {baseline!r} is not one of the variants ({', '.join(variants)})")
    configs = {k: SenCacheConfig(profile, target_nfe=float(target_nfe), **{**config_kwargs, **v})
               for k, v in variants.items()}
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    if not jobs:
        raise SenCacheError("no prompts or seeds to compare on")
    kwargs = dict(num_inference_steps=T, guidance_scale=guidance_scale, **(call_kwargs or {}))
    runs = runs_against_reference(pipe, jobs, configs, kwargs, use_lpips, desc="variants", progress=progress)
    rows = {}
    for name, cfg in configs.items():
        r = runs[name]
        rows[name] = {
            "settings": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in variants[name].items()},
            "eps_schedule": cfg.eps_schedule.to_dict() if cfg.eps_schedule is not None else None,
            "eps": cfg.eps, "simulated_nfe": cfg.budget["simulated_nfe"],
            "nfe": float(np.mean([x["nfe"] for x in r])),
            "psnr": float(np.mean([x["psnr"] for x in r])),
            "ssim": float(np.mean([x["ssim"] for x in r])),
            "lpips": float(np.mean([x["lpips"] for x in r])) if use_lpips else None,
            "runs": r,
        }
    winner = max(rows, key=lambda k: rows[k]["psnr"])
    return {"target_nfe": float(target_nfe), "num_steps": T, "prompts": list(prompts), "seeds": [int(s) for s in seeds],
            "variants": rows, "baseline": baseline, "winner": winner,
            "margin_db": rows[winner]["psnr"] - rows[baseline]["psnr"],
            "nfe_spread": max(r["nfe"] for r in rows.values()) - min(r["nfe"] for r in rows.values())}


def compare_schedules(pipe, profile, prompts: Sequence[str], target_nfe: float, seeds: Sequence[int] = (0,),
                      schedules=None, **kwargs) -> dict:
    """Fixed ε against ε schedules at equal (simulated) NFE, on held-out ``prompts``.

    ``schedules``: names of :data:`sencache.rules.sencache.SCHEDULE_PRESETS` (the default: all of them),
    :class:`~sencache.rules.sencache.EpsSchedule` objects, or a dict name -> either. "constant" (the
    paper's fixed ε) is always included and is the baseline of the margin. Other keyword arguments
    go to :func:`compare_variants`.
    """
    from .rules.sencache import SCHEDULE_PRESETS, as_schedule

    named = schedules if schedules is not None else dict(SCHEDULE_PRESETS)
    if not isinstance(named, dict):
        named = {(as_schedule(s).name or str(s)): s for s in named}
    named = {k: as_schedule(v) for k, v in named.items()}
    if "constant" not in named:
        named = {"constant": SCHEDULE_PRESETS["constant"], **named}
    variants = {k: {"eps_schedule": v} for k, v in named.items()}
    return compare_variants(pipe, profile, prompts, target_nfe, variants, seeds=seeds, baseline="constant", **kwargs)


def compare_correction(pipe, profile, prompts: Sequence[str], target_nfe: float, seeds: Sequence[int] = (0,),
                       **kwargs) -> dict:
    """SenCache with and without the per-sample correction, at the ε budget mode picks for ``target_nfe``
    (the profile needs the normaliser: :func:`calibrate_correction`). Keyword arguments go to
    :func:`compare_variants`."""
    return compare_variants(pipe, profile, prompts, target_nfe, {"fixed": {}, "correction": {"correction": True}},
                            seeds=seeds, baseline="fixed", **kwargs)


def variants_table(result: dict, title: str = "SenCache variants") -> str:
    """A markdown table of :func:`compare_variants`'s result, with the verdict line."""
    lines = [f"{title} at target NFE {result['target_nfe']:g} of {result['num_steps']} "
             f"({len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), held out)", "",
             "| variant | eps scale | simulated NFE | achieved NFE | PSNR dB | SSIM | LPIPS |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        lp = f"{r['lpips']:.4f}" if r["lpips"] is not None else "–"
        lines.append(f"| {name} | {r['eps']:.4g} | {r['simulated_nfe']:.2f} | {r['nfe']:.2f} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {lp} |")
    w, b = result["winner"], result["baseline"]
    verdict = (f"winner: **{w}**, {result['margin_db']:+.2f} dB PSNR over {b}" if w != b
               else f"winner: **{w}** (the baseline); no variant beat it")
    lines += ["", verdict + f"; achieved NFE spread across variants {result['nfe_spread']:.2f}"
              + (" (not equal NFE: read with care)" if result["nfe_spread"] > 1.0 else "")]
    return "\n".join(lines) + "\n"


def schedules_table(result: dict) -> str:
    return variants_table(result, "ε schedules (baseline: constant = the fixed ε)")


def runs_against_reference(pipe, jobs, configs: dict, gen_kwargs: dict, use_lpips: bool, desc: str,
                           progress: bool = True) -> dict:
    """For every (prompt, seed) job: the uncached reference, then each SenCache config on the same inputs.

    Returns ``{key: [{prompt, seed, nfe, psnr, ssim, lpips}, ...]}`` in job order (PSNR capped at 100 dB).
    """
    from tqdm import tqdm

    from . import hooks
    from .generation import generate
    from .methods import quiet_sencache
    from .metrics import video_metrics

    bar = tqdm(total=len(jobs) * (1 + len(configs)), desc=desc, unit="run", disable=not progress, leave=False)
    runs: dict = {k: [] for k in configs}
    try:
        for p, s in jobs:
            ref = generate(pipe, p, s, **gen_kwargs).frames
            bar.update(1)
            for key, cfg in configs.items():
                session = hooks.enable(pipe, cfg)
                try:
                    with quiet_sencache():
                        test = generate(pipe, p, s, **gen_kwargs).frames
                    nfe = int(session.summary()["nfe"])
                finally:
                    hooks.disable(pipe)
                m = video_metrics(ref, test, lpips=use_lpips)
                runs[key].append({"prompt": p, "seed": s, "nfe": nfe, "psnr": min(float(m["psnr"]), 100.0),
                                  "ssim": float(m["ssim"]), "lpips": m["lpips"]})
                bar.update(1)
    finally:
        bar.close()
    return runs
