"""The closed-loop rule replayed offline on the calibration runs' tables, and the λ for an NFE or PSNR target.

Each stored run (``profile.metadata["loop"]["trajectories"]``, :mod:`sencache.calibration.loop`) gives, per step,
the latent distance to the last few steps and the residual's real hold and forecast errors for every interval the
rule can form. With them :func:`replay` runs :mod:`sencache.core.loop` — the very step function of the online
rule — for many candidate tolerances at once (one row per candidate): S and S₁ from the distances, the costs, the
decisions, and at every refresh the measured errors the online adapter would report. On an uncached trajectory it
reproduces the online decisions; a real reuse perturbs the latents, so online schedules after the first reuse can
differ (as for the paper rule's replay).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sencache.core.change import forecast_change, predicted_change
from sencache.core.loop import LoopRows, advance_rows, budget_of, decide_rows, learn_rows, loop_calibration, step_gain
from sencache.errors import SenCacheError


def _table(values, shape) -> torch.Tensor:
    arr = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=np.float64) \
        if len(shape) == 2 else np.array([[[math.nan if v is None else v for v in r] for r in row] for row in values],
                                         dtype=np.float64)
    if arr.shape != shape:
        raise SenCacheError(f"the profile's loop tables have shape {arr.shape}, expected {shape}; recalibrate")
    return torch.from_numpy(arr)


def replay(config, lams, target_psnr: float | None = None) -> dict:
    """The rule at every tolerance in ``lams`` on every stored run.

    Returns {"computed": (runs, T, E) bool, "spent": (runs, E) predicted clip error (combined), "nfe": (runs, E)}.
    """
    info = loop_calibration(config.profile)
    W = int(info["window"])
    if config.max_reuse + 1 > W:
        raise SenCacheError(f"max_reuse={config.max_reuse} needs replay tables of window {config.max_reuse + 1}, "
                            f"the profile has {W}; recalibrate with a larger window")
    lam = torch.as_tensor(np.atleast_1d(np.asarray(lams, dtype=np.float64)))
    E = lam.numel()
    combine = float(info["combine"])
    budget = budget_of(target_psnr, combine)
    computed, spent = [], []
    for run in info["trajectories"]:
        ts = torch.tensor(run["timesteps"], dtype=torch.float64)
        T = ts.numel()
        dx, hold, lin = _table(run["dx"], (T, W)), _table(run["hold"], (T, W)), _table(run["linear"], (T, W, W))
        jx, jt = config.profile.lookup(ts)
        jtt = config.profile.lookup_curve("jtt", ts) if "jtt" in config.profile.curves else torch.ones_like(ts)
        gain = step_gain(config.profile, ts, T, int(info["num_inference_steps"]))
        rows = LoopRows.fresh(E)
        ref = torch.zeros(E, dtype=torch.long)
        prev = torch.full((E,), -1, dtype=torch.long)
        done = torch.zeros(T, E, dtype=torch.bool)
        done[0] = True
        for k in range(1, T):
            g = k - ref
            s = predicted_change(jx[ref], dx[k, g - 1], jt[ref], (ts[k] - ts[ref]).abs())
            two = prev >= 0
            p = prev.clamp_min(0)
            s1 = forecast_change(jtt[ref], (ts[k] - ts[ref]).abs(), (ts[k] - ts[p]).abs())
            s1 = torch.where(two & (config.forecast != "hold"), s1, torch.full_like(s1, math.inf))
            verdict = decide_rows(rows, s, s1, gain[k], lam, budget, config.max_reuse,
                                  forced=config.final_steps > 0 and k >= T - config.final_steps)
            advance_rows(rows, verdict)
            refresh = ~verdict.reuse
            h = (ref - p).clamp(1, W)
            measured_lin = torch.where(two, lin[k, g - 1, h - 1], torch.full_like(s, math.nan))
            learn_rows(rows, refresh, hold[k, g - 1], measured_lin, s, s1, config.learn_momentum)
            prev = torch.where(refresh, ref, prev)
            ref = torch.where(refresh, torch.full_like(ref, k), ref)
            done[k] = refresh
        computed.append(done)
        spent.append(rows.spent * combine)
    comp = torch.stack(computed)
    return {"computed": comp, "spent": torch.stack(spent), "nfe": comp.sum(dim=1)}


def _candidates(config, count: int = 241) -> np.ndarray:
    """Log-spaced tolerances spanning every cost the replay can meet (λ below the smallest computes everything)."""
    info = loop_calibration(config.profile)
    gains = np.asarray(config.profile.curves["gain"], dtype=np.float64)
    holds = [v for run in info["trajectories"] for row in run["hold"] for v in row if v]
    lo = max(1e-12, float(np.min(gains)) * float(np.min(holds)) * 1e-3)
    hi = float(np.max(gains)) * float(np.max(holds)) * 1e3
    return np.geomspace(lo, hi, count)


def solve_loop_eps(config, target_nfe: float) -> dict:
    """The λ whose replayed mean NFE is closest to ``target_nfe`` (ties: the smaller λ), refined twice."""
    info = loop_calibration(config.profile)
    T = int(info["num_inference_steps"])
    target = float(target_nfe)
    if not math.isfinite(target) or not 1.0 <= target <= T:
        raise SenCacheError(f"target NFE must be between 1 and the {T} calibration steps (got {target_nfe!r})")
    lams = _candidates(config)
    best_key, reachable = None, None
    for _ in range(3):  # a coarse log grid, then twice a finer one around the best so far
        out = replay(config, lams)
        nfe = out["nfe"].double().mean(dim=0).numpy()
        reachable = reachable or [float(nfe.min()), float(nfe.max())]
        for i in range(lams.size):
            key = (abs(nfe[i] - target), float(lams[i]))
            if best_key is None or key < best_key:
                best_key, chosen_nfe, per = key, float(nfe[i]), out["nfe"][:, i]
        i = int(np.searchsorted(lams, best_key[1]))
        lams = np.geomspace(lams[max(0, i - 1)], lams[min(lams.size - 1, i + 1)], 41)
    chosen = best_key[1]
    return {"eps": chosen, "simulated_nfe": chosen_nfe, "target_nfe": target, "num_steps": T,
            "per_sample_nfe": [int(v) for v in per], "reachable_nfe": reachable,
            "trajectories": len(info["trajectories"]), "rule": "closed loop (gain)",
            "max_reuse": config.max_reuse, "final_steps": config.final_steps,
            "note": "replayed on the calibration runs' tables; reuse perturbs real trajectories"}


def eps_for_psnr(config, target_psnr: float) -> float:
    """λ for a PSNR target: the largest tolerance whose replayed median clip error (without the budget cap) stays
    within the error the target allows; online, each sample is then capped by its own budget."""
    allowed = 10.0 ** (-float(target_psnr) / 20.0)
    lams = _candidates(config)
    spent = replay(config, lams)["spent"].median(dim=0).values.numpy()
    ok = np.flatnonzero(spent <= allowed)
    return float(lams[ok[-1]]) if ok.size else float(lams[0])
