"""The SenCache rule: reuse while the first-order predicted output change stays under ε.

    S = ‖J_x(t_ref)‖ · rms(x − x_ref) + ‖J_t(t_ref)‖ · |t − t_ref|

x_ref and t_ref are the latent and timestep at the sample's last refresh (deltas accumulate from
there, not step to step); the sensitivities are looked up once, at t_ref. A sample reuses iff
S ≤ ε(step) and it has reused fewer than ``max_reuse`` steps in a row. ε is ``eps_start`` during
the first ``warmup_fraction`` of the steps (the early, structure-forming steps) and ``eps`` after.
The first step and the last ``final_steps`` steps always compute; a non-finite S always refreshes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SenCacheError
from ..profile import SensitivityProfile
from .base import Decision, StepInput, in_final_steps, rms_per_sample


@dataclass
class SenCacheConfig:
    profile: SensitivityProfile
    eps: float = 0.1
    eps_start: float | None = None  # None: eps / 10, the paper's ratio for Wan (0.01 vs 0.1)
    warmup_fraction: float = 0.2
    max_reuse: int = 3
    final_steps: int = 1

    name = "sencache"

    def __post_init__(self):
        if not isinstance(self.profile, SensitivityProfile):
            raise SenCacheError(
                "SenCacheConfig needs a SensitivityProfile: load one with SensitivityProfile.load(path) "
                "or measure one with `sencache calibrate`"
            )
        if self.eps_start is None:
            self.eps_start = self.eps / 10 if math.isfinite(self.eps) else self.eps
        for field_name in ("eps", "eps_start"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise SenCacheError(f"{field_name} must be a number >= 0 (got {value!r}); 0 disables reuse")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise SenCacheError(f"warmup_fraction must be in [0, 1] (got {self.warmup_fraction!r})")
        if not isinstance(self.max_reuse, int) or self.max_reuse < 0:
            raise SenCacheError(f"max_reuse must be an integer >= 0 (got {self.max_reuse!r}); 0 disables reuse")
        if not isinstance(self.final_steps, int) or self.final_steps < 0:
            raise SenCacheError(f"final_steps must be an integer >= 0 (got {self.final_steps!r})")

    def eps_at(self, step: int, num_steps: int) -> float:
        return self.eps_start if step < round(self.warmup_fraction * num_steps) else self.eps

    def build_rule(self) -> "SenCacheRule":
        return SenCacheRule(self)


@dataclass
class SenCacheState:
    x_ref: torch.Tensor | None = None  # (B, ...) latent at each sample's last refresh
    t_ref: torch.Tensor | None = None  # (B,) float64
    jx_ref: torch.Tensor | None = None  # (B,) float64, ‖J_x‖ looked up at t_ref
    jt_ref: torch.Tensor | None = None
    reuse_run: torch.Tensor | None = None  # (B,) consecutive reuses since the last refresh


def predicted_change(state: SenCacheState, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """S per sample, in float64 on the CPU (B values: cheap, and exact enough to compare with ε)."""
    dx = rms_per_sample(x - state.x_ref.to(x.device, x.dtype)).double().cpu()
    dt = (t.double().cpu() - state.t_ref).abs()
    return state.jx_ref * dx + state.jt_ref * dt


class SenCacheRule:
    name = "sencache"

    def __init__(self, config: SenCacheConfig):
        self.config = config

    def new_state(self, batch_size: int) -> SenCacheState:
        return SenCacheState()

    def decide(self, state: SenCacheState, inp: StepInput) -> Decision:
        cfg = self.config
        batch = inp.latent.shape[0]
        eps = cfg.eps_at(inp.step, inp.num_steps)
        t = inp.timestep.reshape(batch, -1)[:, 0]
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            reuse = torch.zeros(batch, dtype=torch.bool)
            score = None
            reasons = ["first"] * batch
        else:
            score = predicted_change(state, inp.latent, t)
            finite = torch.isfinite(score)
            under = finite & (score <= eps)
            room = state.reuse_run < cfg.max_reuse
            reuse = under & room
            reasons = [
                "reuse" if r else ("non-finite" if not f else ("max_reuse" if u else "above_eps"))
                for r, f, u in zip(reuse.tolist(), finite.tolist(), under.tolist())
            ]
            if in_final_steps(inp.step, inp.num_steps, cfg.final_steps):
                reuse = torch.zeros_like(reuse)
                reasons = ["final"] * batch
        self._advance(state, inp, t, reuse)
        return Decision(reuse=reuse, score=score, eps=eps, reason=reasons)

    def _advance(self, state: SenCacheState, inp: StepInput, t: torch.Tensor, reuse: torch.Tensor) -> None:
        refresh = ~reuse
        t64 = t.double().cpu()
        jx, jt = self.config.profile.lookup(t64)
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            state.x_ref = inp.latent.detach().clone()
            state.t_ref, state.jx_ref, state.jt_ref = t64.clone(), jx, jt
            state.reuse_run = torch.zeros(inp.latent.shape[0], dtype=torch.long)
            return
        if refresh.any():
            rows = refresh.to(state.x_ref.device)
            state.x_ref[rows] = inp.latent.detach()[rows].to(state.x_ref.dtype)
            state.t_ref[refresh] = t64[refresh]
            state.jx_ref[refresh] = jx[refresh]
            state.jt_ref[refresh] = jt[refresh]
        state.reuse_run = torch.where(reuse, state.reuse_run + 1, torch.zeros_like(state.reuse_run))

    def observe_refresh(self, state, inp, rows, residual) -> None:
        return None
