"""The closed-loop SenCache step, written once: the online rule and the offline replay both call it.

A *row* is one sample online, or one (calibration trajectory, candidate tolerance) pair in the replay. At every
step k each row predicts the error a reuse would put into the block-stack residual, for both ways of reusing:

    ê_hold = c_hold · S      S  = ‖J_x‖·rms(x − x_ref) + ‖J_t‖·|t − t_ref|        (the paper's change)
    ê_lin  = c_lin  · S₁     S₁ = ½·‖d²f/dt²‖·|t − t_ref|·|t − t_prev|           (the linear forecast's)

and what that error will cost the *final clip*: cost = gain(t_k) · min(ê_hold, ê_lin), with gain(t) measured at
calibration (frame RMS error of the finished clip per unit of residual error at step t;
:mod:`sencache.calibration.loop`). A row reuses iff cost ≤ λ (one tolerance in clip units for every step: the
gain, not a hand-shaped schedule, makes early steps strict), it has reused fewer than ``max_reuse`` steps in a row,
and its running sum of costs stays within its error budget (``target_psnr``; infinite otherwise).

The closed loop: c_hold and c_lin start unknown (a row computes until it has measured one) and are learned from
every refresh: when the block stack runs for a row, the adapter compares the new residual with what holding and
forecasting would have given (:mod:`sencache.adapter.refresh_errors`); the ratios measured / predicted shape of
the interval that just ended update the row's c by a geometric running mean. So a sample whose residual moves
faster than S says gets a larger c and refreshes sooner, per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sencache.errors import SenCacheError


@dataclass
class LoopRows:
    """Per-row state of the closed loop (all (R,) tensors on the CPU)."""

    c_hold: torch.Tensor  # float64, learned residual error per unit of S (NaN: not measured yet)
    c_lin: torch.Tensor  # float64, learned forecast error per unit of S₁ (NaN: not measured yet)
    run: torch.Tensor  # long, reuses in a row since the last refresh
    spent: torch.Tensor  # float64, sum of the costs of the reused steps (predicted clip error, before combining)

    @classmethod
    def fresh(cls, rows: int) -> "LoopRows":
        """Nothing measured, nothing spent."""
        nan = torch.full((rows,), math.nan, dtype=torch.float64)
        return cls(c_hold=nan.clone(), c_lin=nan.clone(), run=torch.zeros(rows, dtype=torch.long),
                   spent=torch.zeros(rows, dtype=torch.float64))


@dataclass
class LoopStep:
    """One step's verdict per row: reuse, order (0 hold, 1 forecast), cost (predicted clip error of a reuse)."""

    reuse: torch.Tensor  # bool
    order: torch.Tensor  # long
    cost: torch.Tensor  # float64 (inf where nothing was measured yet)


def decide_rows(rows: LoopRows, s_hold: torch.Tensor, s_lin: torch.Tensor, gain: torch.Tensor | float,
                lam: torch.Tensor | float, budget: torch.Tensor | float, max_reuse: int,
                forced: bool | torch.Tensor = False) -> LoopStep:
    """The decision of every row at one step (pure: ``rows`` is not changed; :func:`advance_rows` does that).

    ``s_hold`` is S and ``s_lin`` S₁ (inf where the row has no two refreshes), ``gain`` the clip error per unit of
    residual error at this step, ``lam`` the tolerance λ, ``budget`` the row's error budget; ``forced`` rows
    compute (first/final steps)."""
    e_hold = torch.where(torch.isfinite(rows.c_hold), rows.c_hold * s_hold, torch.full_like(s_hold, math.inf))
    e_lin = torch.where(torch.isfinite(rows.c_lin) & torch.isfinite(s_lin), rows.c_lin * s_lin,
                        torch.full_like(s_hold, math.inf))
    order = (e_lin < e_hold).long()
    cost = torch.minimum(e_hold, e_lin) * gain
    cost = torch.where(torch.isnan(cost), torch.full_like(cost, math.inf), cost)
    reuse = torch.isfinite(cost) & (cost <= lam) & (torch.as_tensor(lam) > 0) & (rows.run < max_reuse) \
        & (rows.spent + cost <= budget)  # λ = 0 disables reuse, even where nothing changed
    if isinstance(forced, torch.Tensor):
        reuse = reuse & ~forced
    elif forced:
        reuse = torch.zeros_like(reuse)
    return LoopStep(reuse=reuse, order=torch.where(reuse, order, torch.zeros_like(order)), cost=cost)


def advance_rows(rows: LoopRows, step: LoopStep) -> None:
    """After the decision: reusing rows spend their cost and extend their run; refreshing rows restart it."""
    rows.spent = torch.where(step.reuse, rows.spent + step.cost, rows.spent)
    rows.run = torch.where(step.reuse, rows.run + 1, torch.zeros_like(rows.run))


def learn_rows(rows: LoopRows, refreshed: torch.Tensor, hold_error: torch.Tensor, lin_error: torch.Tensor,
               s_hold: torch.Tensor, s_lin: torch.Tensor, momentum: float) -> None:
    """The closed loop: rows that just refreshed measured the real hold and forecast errors of the interval that
    ended (NaN where unknown) against the S and S₁ they predicted for it; their c follow a geometric running mean
    (the first measurement is taken as it is)."""
    rows.c_hold = _learn(rows.c_hold, refreshed, hold_error, s_hold, momentum)
    rows.c_lin = _learn(rows.c_lin, refreshed, lin_error, s_lin, momentum)


def _learn(c: torch.Tensor, refreshed: torch.Tensor, measured: torch.Tensor, predicted: torch.Tensor,
           momentum: float) -> torch.Tensor:
    ok = refreshed & torch.isfinite(measured) & torch.isfinite(predicted) & (predicted > 0) & (measured >= 0)
    q = torch.where(ok, measured / torch.where(ok, predicted, torch.ones_like(predicted)), torch.ones_like(c))
    log_q = q.clamp_min(1e-12).log()
    known = torch.isfinite(c)
    mixed = torch.where(known, momentum * c.clamp_min(1e-12).log() + (1.0 - momentum) * log_q, log_q).exp()
    return torch.where(ok, mixed, c)


def budget_of(target_psnr: float | None, combine: float) -> float:
    """The error budget, in summed cost units, that a target PSNR (frames in [0, 1]) allows: the predicted clip error
    is ``combine`` · Σ cost, and PSNR = −20·log10(clip RMS error)."""
    if target_psnr is None:
        return math.inf
    return 10.0 ** (-float(target_psnr) / 20.0) / combine


def predicted_psnr(spent: torch.Tensor, combine: float) -> torch.Tensor:
    """The PSNR (dB) each row's reuses predict for its clip (inf where it reused nothing)."""
    err = spent * combine
    return torch.where(err > 0, -20.0 * torch.log10(err.clamp_min(1e-300)), torch.full_like(err, math.inf))


def loop_calibration(profile) -> dict:
    """The profile's closed-loop calibration (gain curve, combine factor, steps), or a clear error."""
    info = profile.metadata.get("loop") if hasattr(profile, "metadata") else None
    if "gain" not in getattr(profile, "curves", {}) or not isinstance(info, dict):
        raise SenCacheError("this profile has no clip-error gain (made before the closed-loop rule); measure it with "
                            "`sencache calibrate` again, or use SenCacheConfig.paper(profile, eps=...)")
    combine = info.get("combine")
    if not isinstance(combine, (int, float)) or not math.isfinite(combine) or combine <= 0:
        raise SenCacheError(f"profile metadata['loop']['combine'] must be a number > 0 (got {combine!r}); recalibrate")
    steps = info.get("num_inference_steps")
    if not isinstance(steps, int) or steps < 2:
        raise SenCacheError(f"profile metadata['loop']['num_inference_steps'] must be an integer >= 2 (got {steps!r})")
    return info


def step_gain(profile, t: torch.Tensor, num_steps: int, calibrated_steps: int) -> torch.Tensor:
    """gain(t) for a run of ``num_steps``: the calibrated curve, scaled by the step size (an output error moves the
    latent by about Δσ·error, and Δσ ∝ 1 / steps)."""
    return profile.lookup_curve("gain", t) * (calibrated_steps / float(num_steps))
