"""The SenCache rule: reuse while the first-order predicted output change stays under ε.

    S = ‖J_x(t_ref)‖ · rms(x − x_ref) + ‖J_t(t_ref)‖ · |t − t_ref|

x_ref and t_ref are the latent and timestep at the sample's last refresh (deltas accumulate from
there, not step to step); the sensitivities are looked up once, at t_ref. A sample reuses iff
S ≤ ε(step) and it has reused fewer than ``max_reuse`` steps in a row. ε is ``eps_start`` during
the first ``warmup_fraction`` of the steps (the early, structure-forming steps) and ``eps · g(s)``
after, with g the ε schedule below. The first step and the last ``final_steps`` steps always
compute; a non-finite S always refreshes.

Beyond the paper (only the ε schedule is on by default; ``eps_schedule="constant"`` gives exactly
the paper's rule):

* **Budget mode** — ``sencache.budget.with_target(config, target_nfe=N)`` (or ``target_speedup=x``,
  i.e. N = T/x) returns the config with ``eps`` picked by replaying this very rule offline on the
  calibration trajectories stored in the profile (:mod:`sencache.core.budget`); ``eps_start`` follows
  as ``eps / 10`` unless given.
* **ε schedule** — ``eps_schedule`` (an :class:`~sencache.core.schedule.EpsSchedule` or a preset name) makes the
  post-warm-up threshold ``eps · g(s)`` with s = step / (T − 1); the warm-up keeps ``eps_start``.
  The default, ``"power2"`` (g = ((1 + s) / 1.5)², 0.44 at the start, 1.78 at the end), is stricter
  early and looser late: at equal NFE it beat the constant ε on three demo models and on 16 held-out
  prompt/seed pairs (docs/results.md). ``None`` or ``"constant"`` is the paper's fixed ε.
* **Per-sample correction** — ``correction=True``: at every refresh the rule compares the real
  change of the sample's block-stack residual since its previous refresh with the S it predicted
  for that interval, and scales the sample's future S by a bounded, smoothed ratio (see
  :meth:`SenCacheRule.observe_refresh` for the units).
"""

from __future__ import annotations

import logging
import math
from dataclasses import InitVar, dataclass, field
from typing import Any

import torch

from sencache.core.change import forecast_change, guarded_forecast_change, predicted_change
from sencache.core.correction import correction_normaliser
from sencache.core.presets import preset_settings
from sencache.core.profile import SensitivityProfile
from sencache.core.rules.base import Decision, StepInput, in_final_steps, rms_per_sample
from sencache.core.rules.sencache_checks import check_settings, settle
from sencache.core.rules.sencache_correction import learn_correction, note_interval
from sencache.core.rules.sencache_loop import SenCacheLoopRule
from sencache.core.schedule import (
    DEFAULT_EPS_SCHEDULE,
    threshold,
)
from sencache.errors import SenCacheError

logger = logging.getLogger("sencache")

# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SenCacheConfig:
    """Settings of the SenCache rule; a plain config (building it runs nothing).

    Args:
        profile: the model's :class:`~sencache.SensitivityProfile` (``sencache calibrate`` measures one; on a
            two-expert pipeline it holds both experts' curves), or one profile per expert by name
            (``{"transformer": p1, "transformer_2": p2}``, joined with :meth:`SensitivityProfile.join_experts`).
        eps: tolerance ε on the predicted change S, in RMS units of the model output per element (the same
            at any resolution). Larger reuses more. 0 disables reuse. Budget mode picks it for you:
            ``sencache.budget.with_target(config, target_nfe=25)``.
        eps_start: ε during the warm-up steps; None ties it to ``eps / 10`` (the paper's ratio for Wan).
        warmup_fraction: fraction of the steps (from the first) that use ``eps_start``; the early,
            structure-forming steps. In [0, 1].
        max_reuse: at most this many reused steps in a row per sample (the paper's n). 0 disables reuse.
        final_steps: the last this many steps always compute.
        eps_schedule: shape g of the post-warm-up threshold ε(step) = eps · g(step / (T − 1)): an
            :class:`~sencache.core.schedule.EpsSchedule`, a preset name ("power2", the default; "constant",
            the paper's fixed ε; ...), knots, or None (= constant).
        forecast: what a reusing sample gets: ``"hold"`` the cached residual (the paper); ``"linear"`` the
            residual extrapolated linearly in t from the sample's last two refreshes (when it has two);
            ``"auto"`` per sample and step whichever has the smaller predicted error — S for holding, S₁ =
            ½·‖d²f/dt²‖·|t − t_ref|·|t − t_prev| for the linear forecast (needs the profile's ``jtt`` curve) —
            and reuse iff that error is ≤ ε(step). None (default): ``"auto"`` when the profile has the curve,
            else ``"hold"``; with the closed loop ``"hold"`` (``"auto"`` lets it choose by its learned errors).
            :meth:`paper` gives the paper's rule exactly.
        forecast_guard: with ``"auto"``, a sample forecasts only while also S ≤ ``forecast_guard``·ε(step)
            (its S₁ is taken as max(S₁, S / forecast_guard)); None (default): no such bound. S₁ depends only
            on the refresh times, so without the guard samples that refreshed together decide together.
        correction: per-sample correction of S from the observed residual changes (needs the profile's
            normaliser, :func:`sencache.calibration.correction.calibrate_correction`).
        correction_bounds: (low, high) clamp of the correction factor; 0 < low <= 1 <= high.
        correction_momentum: weight of the old factor in the running mean, in [0, 1).
        budget: filled by budget mode (:func:`sencache.budget.with_target`): target, chosen eps, simulated
            NFE, plateau; None otherwise.
        loop: the closed-loop rule (:mod:`sencache.core.rules.sencache_loop`): each sample's reuse error is learned
            from its own refreshes and priced by the clip-error gain measured at calibration; ``eps`` is then the
            tolerance on that price (frame RMS error of the final clip per reused step, frames in [0, 1]) and the
            warm-up, ε schedule, forecast and correction settings do not apply. None (default): on when the profile
            carries the gain (``sencache calibrate`` measures it), else the ε-schedule rule above.
        target_psnr: closed loop only: each sample reuses while its predicted clip PSNR stays at or above this (dB);
            ``eps`` None then picks the tolerance by replaying the rule on the calibration runs.
        learn_momentum: closed loop: weight of the old learned ratio in the geometric running mean, in [0, 1).
    """

    profile: SensitivityProfile
    eps: float | None = None
    eps_start: float | None = None
    warmup_fraction: float = 0.2
    max_reuse: int = 3
    final_steps: int = 1
    eps_schedule: Any = DEFAULT_EPS_SCHEDULE
    forecast: str | None = None
    forecast_guard: float | None = None
    correction: bool = False
    correction_bounds: tuple = (0.5, 2.0)
    correction_momentum: float = 0.5
    budget: dict | None = field(default=None, repr=False)
    loop: bool | None = None
    target_psnr: float | None = None
    learn_momentum: float = 0.5
    eps_start_tied: bool = field(default=True, init=False, repr=False)  # eps_start follows eps / 10
    preset_source: str | None = field(default=None, init=False, repr=False)  # set by preset()
    # whether the rule (loop, forecast, schedule, correction, quality target) was left to the default, which budget
    # mode then picks per model family and budget (sencache.core.default_rule)
    rule_left_to_default: bool = field(default=False, init=False, repr=False)
    # accepted only to say where budget mode went (it ran a solver inside the config before)
    target_nfe: InitVar[float | None] = None
    target_speedup: InitVar[float | None] = None

    name = "sencache"

    def __post_init__(self, target_nfe=None, target_speedup=None):
        if target_nfe is not None or target_speedup is not None:
            raise SenCacheError(
                "budget mode is an explicit step: config = sencache.budget.with_target(SenCacheConfig(profile, ...), "
                "target_nfe=N) (or target_speedup=x)")
        settle(self, "rule_left_to_default", self.loop is None and self.forecast is None and self.target_psnr is None
               and not self.correction and self.forecast_guard is None and self.eps_schedule == DEFAULT_EPS_SCHEDULE)
        if isinstance(self.profile, dict) and self.profile:  # one profile per expert (Wan 2.2): one joined profile
            settle(self, "profile", SensitivityProfile.join_experts(self.profile))
        if not isinstance(self.profile, SensitivityProfile):
            raise SenCacheError(
                "SenCacheConfig needs a SensitivityProfile: load one with SensitivityProfile.load(path) "
                "or measure one with `sencache calibrate`"
            )
        check_settings(self)

    @classmethod
    def preset(cls, name: str, profile: SensitivityProfile, **overrides) -> "SenCacheConfig":
        """The published settings ``name`` for a model (:data:`sencache.core.presets.PRESETS`: ε, ε_start,
        n, forced last steps, each with its source), on ``profile``, which must be that model's (calibrated
        here or imported with ``sencache import-profile``). ``overrides`` change single settings."""
        try:
            model_class, settings, source = preset_settings(name)
        except KeyError as exc:
            raise SenCacheError(str(exc.args[0])) from None
        have = profile.metadata.get("model_class") if isinstance(profile, SensitivityProfile) else None
        if have and have != model_class:
            raise SenCacheError(f"preset {name!r} is for {model_class}, but the profile was measured on {have}; "
                                f"pick a preset for {have} (or calibrate and use budget mode)")
        config = cls(profile, **{"loop": False, **settings, **overrides})
        settle(config, "preset_source", f"{name}: {source}")
        return config

    @classmethod
    def paper(cls, profile: SensitivityProfile, eps: float = 0.1, **overrides) -> "SenCacheConfig":
        """Exactly the paper's rule: hold the cached residual, a constant ε after the warm-up (ε_start = ε/10
        for the first 20 % of the steps), at most 3 reuses in a row, the last step always computed."""
        settings = dict(eps=eps, eps_start=None, warmup_fraction=0.2, max_reuse=3, final_steps=1,
                        eps_schedule="constant", forecast="hold", correction=False, loop=False)
        return cls(profile, **{**settings, **overrides})

    def warmup_steps(self, num_steps: int) -> int:
        """Steps (from the first) that use ``eps_start``."""
        return round(self.warmup_fraction * num_steps)

    def eps_at(self, step: int, num_steps: int) -> float:
        """The threshold ε in force at ``step`` of ``num_steps`` (the closed loop: λ at every step)."""
        if self.loop:
            return float(self.eps)
        return threshold(self.eps, self.eps_start, step, num_steps, self.warmup_steps(num_steps), self.eps_schedule)

    def build_rule(self):
        """A fresh rule for the adapter: :class:`SenCacheLoopRule` (closed loop) or :class:`SenCacheRule`."""
        return SenCacheLoopRule(self) if self.loop else SenCacheRule(self)


# --------------------------------------------------------------------------------------------
# rule
# --------------------------------------------------------------------------------------------
@dataclass
class SenCacheState:
    """Per-generation state of the rule, one row per sample (CPU float64 except the latent reference)."""

    x_ref: torch.Tensor | None = None  # (B, ...) latent at each sample's last refresh
    t_ref: torch.Tensor | None = None  # (B,) float64
    jx_ref: torch.Tensor | None = None  # (B,) float64, ‖J_x‖ looked up at t_ref
    jt_ref: torch.Tensor | None = None
    reuse_run: torch.Tensor | None = None  # (B,) consecutive reuses since the last refresh
    t_prev: torch.Tensor | None = None  # (B,) float64 timestep of the refresh before the last (NaN: none yet)
    jtt_ref: torch.Tensor | None = None  # (B,) float64 curvature ‖d²f/dt²‖ at t_ref (forecast="auto")
    # per-sample correction (only used with correction=True)
    factor: torch.Tensor | None = None  # (B,) float64, multiplies S
    residual_ref: torch.Tensor | None = None  # (B, ...) cond-branch residual at the last refresh
    has_residual: torch.Tensor | None = None  # (B,) bool
    pending_s: torch.Tensor | None = None  # (B,) raw S of the interval that ended with this step's refresh
    pending_t: torch.Tensor | None = None  # (B,) t_ref at the start of that interval
    pending_gap: torch.Tensor | None = None  # (B,) its length in steps
    step_ref: torch.Tensor | None = None  # (B,) step of the last refresh
    last_ratio: torch.Tensor | None = None  # (B,) last observed (normalised) real / predicted, NaN if none


def change_since_refresh(state: SenCacheState, x: torch.Tensor, t: torch.Tensor, rms=rms_per_sample) -> torch.Tensor:
    """S per sample since its last refresh, in float64 on the CPU (B values: cheap, and exact enough to compare with ε).

    ``rms`` is the per-sample RMS to use (:attr:`StepInput.rms`: across all ranks under context parallelism)."""
    dx = rms(x - state.x_ref.to(x.device, x.dtype)).double().cpu()
    dt = (t.double().cpu() - state.t_ref).abs()
    return predicted_change(state.jx_ref, dx, state.jt_ref, dt)


class SenCacheRule:
    """The rule itself (see the module docstring); built by :meth:`SenCacheConfig.build_rule`."""

    name = "sencache"

    def __init__(self, config: SenCacheConfig):
        self.config = config
        self.forecasts = config.forecast != "hold"  # the adapter keeps the refresh before the last
        self._norm = correction_normaliser(config.profile) if config.correction else None
        self._warned_steps = False

    def new_state(self, batch_size: int) -> SenCacheState:
        """Fresh state for ``batch_size`` samples (references are set at the first step)."""
        return SenCacheState()

    def decide(self, state: SenCacheState, inp: StepInput) -> Decision:
        """Per sample: reuse iff S ≤ ε(step) and fewer than ``max_reuse`` reuses in a row; the first and the
        final steps compute; a non-finite S refreshes. Moves the references of the refreshing samples.
        """
        cfg = self.config
        batch = inp.latent.shape[0]
        self._check_budget_steps(inp.num_steps)
        eps = cfg.eps_at(inp.step, inp.num_steps)
        t = inp.timestep.reshape(batch, -1)[:, 0]
        raw = None
        order = torch.zeros(batch, dtype=torch.long)
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            reuse = torch.zeros(batch, dtype=torch.bool)
            score = None
            reasons = ["first"] * batch
        else:
            raw = change_since_refresh(state, inp.latent, t, inp.rms)
            score = raw * state.factor if cfg.correction else raw
            s1 = self._forecast_error(state, t) if cfg.forecast == "auto" else None
            if s1 is not None:
                s1 = guarded_forecast_change(s1, score, cfg.forecast_guard)
            order = self._forecast_order(state, score, s1)
            if s1 is not None:
                score = torch.where(order > 0, s1, score)
            finite = torch.isfinite(score)
            under = finite & (score <= eps) & (eps > 0)  # ε = 0 disables reuse, even where S is 0
            room = state.reuse_run < cfg.max_reuse
            reuse = under & room
            reasons = [
                "reuse" if r else ("non-finite" if not f else ("max_reuse" if u else "above_eps"))
                for r, f, u in zip(reuse.tolist(), finite.tolist(), under.tolist())
            ]
            if in_final_steps(inp.step, inp.num_steps, cfg.final_steps):
                reuse = torch.zeros_like(reuse)
                reasons = ["final"] * batch
        if cfg.correction:
            note_interval(state, inp.step, batch, raw, reuse)
        self._advance(state, inp, t, reuse)
        order = torch.where(reuse, order, torch.zeros_like(order))
        return Decision(reuse=reuse, score=score, eps=eps, reason=reasons,
                        order=order if self.forecasts else None)

    def _forecast_error(self, state: SenCacheState, t: torch.Tensor) -> torch.Tensor:
        """S₁ per sample: the predicted error of the linear forecast (inf without two refreshes)."""
        t64 = t.double().cpu()
        s1 = forecast_change(state.jtt_ref, (t64 - state.t_ref).abs(), (t64 - state.t_prev).abs())
        return torch.where(torch.isfinite(state.t_prev), s1, torch.full_like(s1, math.inf))

    def _forecast_order(self, state: SenCacheState, score: torch.Tensor, s1: torch.Tensor | None) -> torch.Tensor:
        """1 where a reusing sample should get the linear forecast, 0 where it should hold the cache
        (``s1``: the forecast's predicted error, given in "auto" mode)."""
        two = torch.isfinite(state.t_prev)
        if self.config.forecast == "linear":
            return two.long()
        if self.config.forecast == "auto":
            return (two & (s1 < score)).long()
        return torch.zeros_like(two, dtype=torch.long)

    def _check_budget_steps(self, num_steps: int) -> None:
        budget = self.config.budget
        if budget and not self._warned_steps and budget.get("num_steps") not in (None, num_steps):
            self._warned_steps = True
            logger.warning(
                f"sencache: eps={self.config.eps:.4g} was chosen for {budget['num_steps']} steps "
                f"(target NFE {budget.get('target_nfe')}), but this generation has {num_steps}; "
                f"recalibrate with --steps {num_steps} for a budget at this step count")

    def _advance(self, state: SenCacheState, inp: StepInput, t: torch.Tensor, reuse: torch.Tensor) -> None:
        refresh = ~reuse
        t64 = t.double().cpu()
        jx, jt = self.config.profile.lookup(t64)
        jtt = self.config.profile.lookup_curve("jtt", t64) if self.config.forecast == "auto" else \
            torch.zeros_like(t64)
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            state.x_ref = inp.latent.detach().clone()
            state.t_ref, state.jx_ref, state.jt_ref, state.jtt_ref = t64.clone(), jx, jt, jtt
            state.t_prev = torch.full_like(t64, math.nan)
            state.reuse_run = torch.zeros(inp.latent.shape[0], dtype=torch.long)
            return
        if bool(refresh.all()):  # every row refreshes (always so for one sample): new references, no masked writes
            state.x_ref.copy_(inp.latent.detach())
            state.t_prev, state.jtt_ref, state.t_ref = state.t_ref, jtt, t64.clone()
            state.jx_ref, state.jt_ref = jx, jt
        elif refresh.any():
            rows = refresh.to(state.x_ref.device)
            state.x_ref[rows] = inp.latent.detach()[rows].to(state.x_ref.dtype)
            state.t_prev[refresh] = state.t_ref[refresh]
            state.jtt_ref[refresh] = jtt[refresh]
            state.t_ref[refresh] = t64[refresh]
            state.jx_ref[refresh] = jx[refresh]
            state.jt_ref[refresh] = jt[refresh]
        state.reuse_run = torch.where(reuse, state.reuse_run + 1, torch.zeros_like(state.reuse_run))

    def observe_refresh(self, state, inp, rows, residual) -> None:
        """Per-sample correction (``correction=True`` only; otherwise nothing to learn).

        Units: S predicts the RMS change of the model *output*, but the rule sees the block-stack
        *residual* (hidden width, not output units). The real change of a refreshed sample is
        q = rms(r_now − r_prev) / (S_pred · ρ̄(t_prev, gap)), where ρ̄(t, g) is the population's typical
        rms(Δr) / S for uncached intervals of g steps starting at t, measured on calibration
        trajectories (:func:`sencache.calibration.correction.calibrate_correction`; per gap, because Δr grows more
        slowly than the first-order S over longer intervals). So q = 1 means "this sample changed
        exactly as much as S predicts for an average sample", q = 2 "twice as much". The factor follows
        c ← clamp(m·c + (1 − m)·q, low, high) with m = ``correction_momentum``, and the next
        decisions compare c·S with ε. Both S and rms(Δr) accumulate from the previous refresh, so
        every refresh after the first gives one observation per sample, reused or not in between.
        """
        learn_correction(state, self._norm, self.config, inp, rows, residual)
