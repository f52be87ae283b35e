"""SenCache with the closed loop and the clip-error gain: the default rule when the profile carries its calibration.

The step itself is :mod:`sencache.core.loop` (shared with the offline replay of budget mode). This module keeps the
per-sample references (latent and timestep at the last refresh, the sensitivities there), computes S and S₁ for the
step, and hands the real hold and forecast errors the adapter measured at every refresh to the loop.

The profile must carry ``curves["gain"]`` and ``metadata["loop"]`` (``sencache calibrate`` measures both;
:func:`sencache.calibration.loop.calibrate_loop` adds them to an existing profile).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from sencache.core.change import forecast_change, predicted_change
from sencache.core.loop import (
    LoopRows,
    LoopStep,
    advance_rows,
    budget_of,
    decide_rows,
    learn_rows,
    loop_calibration,
    step_gain,
)
from sencache.core.rules.base import Decision, StepInput, in_final_steps

logger = logging.getLogger("sencache")


@dataclass
class LoopState:
    """Per-generation state: references per sample, the loop's rows, the S and S₁ of the current step."""

    x_ref: torch.Tensor | None = None  # (B, ...) latent at each sample's last refresh
    t_ref: torch.Tensor | None = None  # (B,) float64
    t_prev: torch.Tensor | None = None  # (B,) float64, the refresh before (NaN: none yet)
    jx_ref: torch.Tensor | None = None
    jt_ref: torch.Tensor | None = None
    jtt_ref: torch.Tensor | None = None
    rows: LoopRows | None = None
    s_hold: torch.Tensor | None = None  # (B,) S of this step (what a refresh now is measured against)
    s_lin: torch.Tensor | None = None  # (B,) S₁ of this step
    budget: float = math.inf


class SenCacheLoopRule:
    """Reuse while the predicted clip error of the reuse stays under λ (and the sample's budget); learn per sample."""

    name = "sencache"
    measures_refresh = True  # the adapter reports the real hold / forecast error at every refresh

    def __init__(self, config):
        self.config = config
        # forecasting ("auto"): the adapter keeps the refresh before the last, for the forecast and its measured error
        self.forecasts = config.forecast != "hold"
        info = loop_calibration(config.profile)
        self.combine = float(info["combine"])
        self.calibrated_steps = int(info["num_inference_steps"])
        self.has_curvature = "jtt" in config.profile.curves

    def new_state(self, batch_size: int) -> LoopState:
        """Fresh state; the references are set at the first step."""
        return LoopState(budget=budget_of(self.config.target_psnr, self.combine))

    def decide(self, state: LoopState, inp: StepInput) -> Decision:
        """Per sample: cost = gain·min(ê_hold, ê_lin); reuse iff cost ≤ λ, the run is short enough and the budget
        holds. The first step and the final steps compute."""
        cfg = self.config
        batch = inp.latent.shape[0]
        t = inp.timestep.reshape(batch, -1)[:, 0].double().cpu()
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            self._start(state, inp, t)
            return Decision(reuse=torch.zeros(batch, dtype=torch.bool), score=None, eps=float(cfg.eps),
                            reason=["first"] * batch, order=torch.zeros(batch, dtype=torch.long),
                            predicted=self.predicted_error(state))
        dx = inp.rms(inp.latent - state.x_ref.to(inp.latent.device, inp.latent.dtype)).double().cpu()
        state.s_hold = predicted_change(state.jx_ref, dx, state.jt_ref, (t - state.t_ref).abs())
        s1 = forecast_change(state.jtt_ref, (t - state.t_ref).abs(), (t - state.t_prev).abs())
        can_forecast = torch.isfinite(state.t_prev) & (cfg.forecast != "hold")
        state.s_lin = torch.where(can_forecast, s1, torch.full_like(s1, math.inf))
        gain = step_gain(cfg.profile, t, inp.num_steps, self.calibrated_steps)
        final = in_final_steps(inp.step, inp.num_steps, cfg.final_steps)
        verdict = decide_rows(state.rows, state.s_hold, state.s_lin, gain, float(cfg.eps), state.budget,
                              cfg.max_reuse, forced=final)
        reasons = ["final"] * batch if final else self._reasons(state, verdict)
        advance_rows(state.rows, verdict)
        self._move_references(state, inp, t, ~verdict.reuse)
        return Decision(reuse=verdict.reuse, score=verdict.cost, eps=float(cfg.eps), reason=reasons,
                        order=verdict.order, predicted=self.predicted_error(state))

    def predicted_error(self, state: LoopState) -> torch.Tensor:
        """(B,) the clip's predicted frame RMS error from the reuses so far."""
        return state.rows.spent * self.combine

    def observe_refresh(self, state, inp, rows, residual) -> None:
        """Nothing: the loop learns from :meth:`observe_errors`."""
        return None

    def observe_errors(self, state: LoopState, rows: torch.Tensor, hold: torch.Tensor, linear: torch.Tensor) -> None:
        """The block stack ran for ``rows``; ``hold`` / ``linear`` (B,) are the real errors holding / forecasting
        would have made at this step (NaN where the sample had no cache to measure)."""
        if state.rows is None or state.s_hold is None:
            return
        learn_rows(state.rows, rows.cpu().bool(), hold.double().cpu(), linear.double().cpu(), state.s_hold,
                   state.s_lin, self.config.learn_momentum)

    def _reasons(self, state: LoopState, verdict: LoopStep) -> list[str]:
        out = []
        for reuse, cost, run, known in zip(verdict.reuse.tolist(), verdict.cost.tolist(), state.rows.run.tolist(),
                                           torch.isfinite(state.rows.c_hold).tolist()):
            if reuse:
                out.append("reuse")
            elif not known:
                out.append("learning")
            elif run >= self.config.max_reuse:
                out.append("max_reuse")
            elif math.isfinite(cost) and cost <= self.config.eps:
                out.append("budget")
            else:
                out.append("above_eps")
        return out

    def _curvature(self, t: torch.Tensor) -> torch.Tensor:
        return self.config.profile.lookup_curve("jtt", t) if self.has_curvature else torch.ones_like(t)

    def _start(self, state: LoopState, inp: StepInput, t: torch.Tensor) -> None:
        batch = inp.latent.shape[0]
        state.x_ref = inp.latent.detach().clone()
        state.t_ref = t.clone()
        state.t_prev = torch.full_like(t, math.nan)
        state.jx_ref, state.jt_ref = self.config.profile.lookup(t)
        state.jtt_ref = self._curvature(t)
        state.rows = LoopRows.fresh(batch)
        state.s_hold = state.s_lin = None

    def _move_references(self, state: LoopState, inp: StepInput, t: torch.Tensor, refresh: torch.Tensor) -> None:
        if not bool(refresh.any()):
            return
        state.x_ref[refresh.to(state.x_ref.device)] = inp.latent.detach()[refresh.to(inp.latent.device)].to(
            state.x_ref.dtype)
        jx, jt = self.config.profile.lookup(t)
        state.t_prev = torch.where(refresh, state.t_ref, state.t_prev)
        state.t_ref = torch.where(refresh, t, state.t_ref)
        state.jx_ref = torch.where(refresh, jx, state.jx_ref)
        state.jt_ref = torch.where(refresh, jt, state.jt_ref)
        state.jtt_ref = torch.where(refresh, self._curvature(t), state.jtt_ref)
