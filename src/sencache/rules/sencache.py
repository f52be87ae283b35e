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

* **Budget mode** — ``target_nfe=N`` (or ``target_speedup=x``, i.e. N = T/x) picks ``eps`` by
  simulating this very rule offline on the calibration trajectories stored in the profile
  (:mod:`sencache.budget`); ``eps_start`` follows as ``eps / 10`` unless given.
* **ε schedule** — ``eps_schedule`` (an :class:`EpsSchedule` or a preset name) makes the
  post-warm-up threshold ``eps · g(s)`` with s = step / (T − 1); the warm-up keeps ``eps_start``.
  The default, ``"power2"`` (g = ((1 + s) / 1.5)², 0.44 at the start, 1.78 at the end), is stricter
  early and looser late: at equal NFE it beat the constant ε on three demo models and on 16 held-out
  prompt/seed pairs (README, "ε schedule"). ``None`` or ``"constant"`` is the paper's fixed ε.
* **Per-sample correction** — ``correction=True``: at every refresh the rule compares the real
  change of the sample's block-stack residual since its previous refresh with the S it predicted
  for that interval, and scales the sample's future S by a bounded, smoothed ratio (see
  :meth:`SenCacheRule.observe_refresh` for the units).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SenCacheError
from ..profile import SensitivityProfile
from .base import Decision, StepInput, in_final_steps, rms_per_sample

logger = logging.getLogger("sencache")


# --------------------------------------------------------------------------------------------
# ε schedules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpsSchedule:
    """A shape g(s) ≥ 0 over normalised time s = step / (T − 1) ∈ [0, 1]; ε(step) = eps · g(s).

    kinds (``params``):
      * ``"knots"`` — piecewise-linear through ``knots = ((s0, g0), (s1, g1), ...)``, s increasing
        in [0, 1], constant beyond the first and last knot. ``EpsSchedule.linear(a, b)`` is
        g(s) = a + b·s; ``EpsSchedule.constant()`` is g ≡ 1 (the paper's fixed ε).
      * ``"power"`` — g(s) = ((1 + s) / 1.5) ** p: smooth, g(0.5) = 1, rising for p > 0.
    The scale ``eps`` is the config's (budget mode picks it), so only the shape matters here.
    """

    kind: str = "knots"
    knots: tuple = ((0.0, 1.0), (1.0, 1.0))
    p: float = 0.0
    name: str = ""

    def __post_init__(self):
        if self.kind == "knots":
            try:
                knots = tuple((float(s), float(g)) for s, g in self.knots)
            except (TypeError, ValueError):
                raise SenCacheError("EpsSchedule knots must be pairs (s, g) of numbers") from None
            if not knots:
                raise SenCacheError("EpsSchedule needs at least one knot (s, g)")
            ss = [s for s, _ in knots]
            if any(not (0.0 <= s <= 1.0) for s in ss) or any(b < a for a, b in zip(ss, ss[1:])):
                raise SenCacheError(f"EpsSchedule knot positions must be non-decreasing in [0, 1] (got {ss})")
            if any(not math.isfinite(g) or g < 0 for _, g in knots):
                raise SenCacheError("EpsSchedule knot values must be finite and >= 0")
            object.__setattr__(self, "knots", knots)
        elif self.kind == "power":
            if not math.isfinite(float(self.p)):
                raise SenCacheError(f"EpsSchedule power p must be finite (got {self.p!r})")
            object.__setattr__(self, "p", float(self.p))
        else:
            raise SenCacheError(f"EpsSchedule kind must be 'knots' or 'power' (got {self.kind!r})")

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def constant(cls) -> "EpsSchedule":
        return cls("knots", ((0.0, 1.0), (1.0, 1.0)), name="constant")

    @classmethod
    def linear(cls, a: float, b: float, name: str = "") -> "EpsSchedule":
        """g(s) = a + b·s."""
        return cls("knots", ((0.0, a), (1.0, a + b)), name=name or f"linear({a:g},{b:+g})")

    @classmethod
    def power(cls, p: float, name: str = "") -> "EpsSchedule":
        return cls("power", p=p, name=name or f"power({p:g})")

    @classmethod
    def from_knots(cls, knots, name: str = "") -> "EpsSchedule":
        return cls("knots", tuple(knots), name=name or "knots")

    # --- evaluation -----------------------------------------------------------------------
    def __call__(self, s: float) -> float:
        s = min(max(float(s), 0.0), 1.0)
        if self.kind == "power":
            return ((1.0 + s) / 1.5) ** self.p
        knots = self.knots
        if s <= knots[0][0]:
            return knots[0][1]
        for (s0, g0), (s1, g1) in zip(knots, knots[1:]):
            if s <= s1:
                return g1 if s1 == s0 else g0 + (s - s0) / (s1 - s0) * (g1 - g0)
        return knots[-1][1]

    def factor(self, step: int, num_steps: int) -> float:
        return self(step / (num_steps - 1) if num_steps > 1 else 0.0)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name or self.kind}
        if self.kind == "knots":
            out["knots"] = [list(k) for k in self.knots]
        else:
            out["p"] = self.p
        return out


SCHEDULE_PRESETS: dict[str, EpsSchedule] = {
    "constant": EpsSchedule.constant(),
    "rising": EpsSchedule.linear(0.5, 1.0, name="rising"),  # 0.5 → 1.5
    "falling": EpsSchedule.linear(1.5, -1.0, name="falling"),  # 1.5 → 0.5
    "hump": EpsSchedule.from_knots(((0.0, 0.5), (0.5, 1.5), (1.0, 0.5)), name="hump"),
    "late-strict": EpsSchedule.from_knots(((0.0, 1.0), (0.7, 1.0), (1.0, 0.25)), name="late-strict"),
    "power2": EpsSchedule.power(2.0, name="power2"),
}


DEFAULT_EPS_SCHEDULE = "power2"  # beat the paper's constant eps at equal NFE on every demo model (README)


def as_schedule(value) -> EpsSchedule | None:
    """None, an :class:`EpsSchedule`, a preset name, a dict from :meth:`EpsSchedule.to_dict`, or knots."""
    if value is None or isinstance(value, EpsSchedule):
        return value
    if isinstance(value, str):
        if value not in SCHEDULE_PRESETS:
            raise SenCacheError(f"unknown eps schedule {value!r}; presets: {', '.join(SCHEDULE_PRESETS)}")
        return SCHEDULE_PRESETS[value]
    if isinstance(value, dict):
        kind = value.get("kind", "knots")
        if kind == "power":
            return EpsSchedule("power", p=value.get("p", 0.0), name=value.get("name", ""))
        return EpsSchedule("knots", tuple(tuple(k) for k in value.get("knots", ())), name=value.get("name", ""))
    if isinstance(value, (list, tuple)):
        return EpsSchedule.from_knots(value)
    raise SenCacheError(f"eps_schedule must be an EpsSchedule, a preset name or knots (got {type(value).__name__})")


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@dataclass
class SenCacheConfig:
    profile: SensitivityProfile
    eps: float = 0.1
    eps_start: float | None = None  # None: eps / 10, the paper's ratio for Wan (0.01 vs 0.1)
    warmup_fraction: float = 0.2
    max_reuse: int = 3
    final_steps: int = 1
    # --- beyond the paper (defaults keep the rule above) ---
    target_nfe: float | None = None  # budget mode: eps is chosen so the calibration trajectories hit this NFE
    target_speedup: float | None = None  # budget mode: target_nfe = T / target_speedup
    # EpsSchedule or preset name: post-warm-up ε(step) = eps · g(step / (T - 1)); None or "constant": the paper's
    eps_schedule: Any = DEFAULT_EPS_SCHEDULE
    correction: bool = False  # per-sample correction of S from observed residual changes
    correction_bounds: tuple = (0.5, 2.0)
    correction_momentum: float = 0.5  # weight of the old factor in the running mean
    budget: dict | None = field(default=None, repr=False)  # filled by budget mode: chosen eps, simulated NFE

    name = "sencache"

    def __post_init__(self):
        if not isinstance(self.profile, SensitivityProfile):
            raise SenCacheError(
                "SenCacheConfig needs a SensitivityProfile: load one with SensitivityProfile.load(path) "
                "or measure one with `sencache calibrate`"
            )
        self.eps_schedule = as_schedule(self.eps_schedule)
        self._check_correction()
        if self.target_nfe is not None or self.target_speedup is not None:
            from ..budget import resolve_budget  # budget simulates this rule, so it imports this module

            resolve_budget(self)  # sets eps, eps_start (eps / 10 unless given) and budget
        self.eps_start_tied = self.eps_start is None  # budget mode's simulation keeps the tie
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

    def _check_correction(self) -> None:
        try:
            lo, hi = (float(v) for v in self.correction_bounds)
        except (TypeError, ValueError):
            raise SenCacheError(f"correction_bounds must be (low, high) (got {self.correction_bounds!r})") from None
        if not (0 < lo <= 1.0 <= hi < math.inf):
            raise SenCacheError(f"correction_bounds must satisfy 0 < low <= 1 <= high < inf (got {(lo, hi)})")
        self.correction_bounds = (lo, hi)
        m = self.correction_momentum
        if not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
            raise SenCacheError(f"correction_momentum must be in [0, 1) (got {m!r})")
        if self.correction:
            correction_normaliser(self.profile)  # fail now, not mid-generation

    def warmup_steps(self, num_steps: int) -> int:
        return round(self.warmup_fraction * num_steps)

    def eps_at(self, step: int, num_steps: int) -> float:
        if step < self.warmup_steps(num_steps):
            return self.eps_start
        if self.eps_schedule is not None:
            g = self.eps_schedule.factor(step, num_steps)
            return self.eps * g if g > 0 else 0.0  # g = 0 forbids reuse there, even with eps = inf
        return self.eps

    def build_rule(self) -> "SenCacheRule":
        return SenCacheRule(self)


def correction_normaliser(profile: SensitivityProfile) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (J,), ratio (J, W)) of the profile's residual-change normaliser: the typical
    rms(Δ residual) / S of uncached intervals starting at each timestep, per gap 1..W steps
    (see :func:`sencache.budget.calibrate_correction`)."""
    info = profile.metadata.get("correction")
    if not isinstance(info, dict) or not info.get("timesteps") or not info.get("ratio"):
        raise SenCacheError(
            "correction=True needs the profile's residual-change normaliser (metadata['correction']); add it with "
            "sencache.budget.calibrate_correction(pipe, profile, prompts) and save the profile"
        )
    try:
        t = torch.tensor([float(v) for v in info["timesteps"]], dtype=torch.float64)
        r = torch.tensor([[float(v) for v in row] for row in info["ratio"]], dtype=torch.float64)
    except (TypeError, ValueError):
        r = torch.zeros(0)
    if r.ndim != 2 or r.shape[0] != t.numel() or r.shape[1] < 1 or not bool(torch.isfinite(r).all()) \
            or bool((r <= 0).any()):
        raise SenCacheError("the profile's correction normaliser is malformed; rerun calibrate_correction")
    order = torch.argsort(t)
    return t[order], r[order]


# --------------------------------------------------------------------------------------------
# rule
# --------------------------------------------------------------------------------------------
@dataclass
class SenCacheState:
    x_ref: torch.Tensor | None = None  # (B, ...) latent at each sample's last refresh
    t_ref: torch.Tensor | None = None  # (B,) float64
    jx_ref: torch.Tensor | None = None  # (B,) float64, ‖J_x‖ looked up at t_ref
    jt_ref: torch.Tensor | None = None
    reuse_run: torch.Tensor | None = None  # (B,) consecutive reuses since the last refresh
    # per-sample correction (only used with correction=True)
    factor: torch.Tensor | None = None  # (B,) float64, multiplies S
    residual_ref: torch.Tensor | None = None  # (B, ...) cond-branch residual at the last refresh
    has_residual: torch.Tensor | None = None  # (B,) bool
    pending_s: torch.Tensor | None = None  # (B,) raw S of the interval that ended with this step's refresh
    pending_t: torch.Tensor | None = None  # (B,) t_ref at the start of that interval
    pending_gap: torch.Tensor | None = None  # (B,) its length in steps
    step_ref: torch.Tensor | None = None  # (B,) step of the last refresh
    last_ratio: torch.Tensor | None = None  # (B,) last observed (normalised) real / predicted, NaN if none


def predicted_change(state: SenCacheState, x: torch.Tensor, t: torch.Tensor, rms=rms_per_sample) -> torch.Tensor:
    """S per sample, in float64 on the CPU (B values: cheap, and exact enough to compare with ε).

    ``rms`` is the per-sample RMS to use (:attr:`StepInput.rms`: across all ranks under context parallelism)."""
    dx = rms(x - state.x_ref.to(x.device, x.dtype)).double().cpu()
    dt = (t.double().cpu() - state.t_ref).abs()
    return state.jx_ref * dx + state.jt_ref * dt


class SenCacheRule:
    name = "sencache"

    def __init__(self, config: SenCacheConfig):
        self.config = config
        self._norm = correction_normaliser(config.profile) if config.correction else None
        self._warned_steps = False

    def new_state(self, batch_size: int) -> SenCacheState:
        return SenCacheState()

    def decide(self, state: SenCacheState, inp: StepInput) -> Decision:
        cfg = self.config
        batch = inp.latent.shape[0]
        self._check_budget_steps(inp.num_steps)
        eps = cfg.eps_at(inp.step, inp.num_steps)
        t = inp.timestep.reshape(batch, -1)[:, 0]
        raw = None
        if state.x_ref is None or state.x_ref.shape != inp.latent.shape:
            reuse = torch.zeros(batch, dtype=torch.bool)
            score = None
            reasons = ["first"] * batch
        else:
            raw = predicted_change(state, inp.latent, t, inp.rms)
            score = raw * state.factor if cfg.correction else raw
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
        if cfg.correction:
            self._note_interval(state, inp.step, batch, raw, reuse)
        self._advance(state, inp, t, reuse)
        return Decision(reuse=reuse, score=score, eps=eps, reason=reasons)

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

    # --- per-sample correction -------------------------------------------------------------
    def _note_interval(self, state: SenCacheState, step: int, batch: int, raw: torch.Tensor | None,
                       reuse: torch.Tensor) -> None:
        """Before the references move: remember, for the rows that refresh now, the S predicted for the
        interval since their previous refresh, the timestep it started at and its length in steps."""
        nan = torch.full((batch,), math.nan, dtype=torch.float64)
        if state.factor is None or state.factor.shape[0] != batch or raw is None:
            state.factor = torch.ones(batch, dtype=torch.float64)
            state.has_residual = torch.zeros(batch, dtype=torch.bool)
            state.last_ratio = nan.clone()
            state.residual_ref = None
            state.pending_s, state.pending_t = nan.clone(), nan.clone()
            state.pending_gap = torch.zeros(batch, dtype=torch.long)
            state.step_ref = torch.full((batch,), step, dtype=torch.long)
            return
        refresh = ~reuse.cpu()
        state.pending_s = torch.where(refresh, raw, nan)
        state.pending_t = torch.where(refresh, state.t_ref, nan)
        state.pending_gap = torch.where(refresh, step - state.step_ref, torch.zeros_like(state.step_ref))
        state.step_ref = torch.where(refresh, torch.full_like(state.step_ref, step), state.step_ref)

    def normaliser_at(self, t: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """ρ̄ at timesteps ``t`` for intervals of ``gap`` steps (gaps beyond the table use its last column)."""
        from ..profile import _interp

        ts, table = self._norm
        t = t.double().reshape(-1)
        cols = (gap.reshape(-1).long() - 1).clamp(0, table.shape[1] - 1)
        out = torch.empty_like(t)
        for i in range(t.numel()):
            out[i] = _interp(t[i:i + 1], ts, table[:, int(cols[i])])[0]
        return out

    def observe_refresh(self, state, inp, rows, residual) -> None:
        """Per-sample correction (``correction=True`` only; otherwise nothing to learn).

        Units: S predicts the RMS change of the model *output*, but the rule sees the block-stack
        *residual* (hidden width, not output units). The real change of a refreshed sample is
        q = rms(r_now − r_prev) / (S_pred · ρ̄(t_prev, gap)), where ρ̄(t, g) is the population's typical
        rms(Δr) / S for uncached intervals of g steps starting at t, measured on calibration
        trajectories (:func:`sencache.budget.calibrate_correction`; per gap, because Δr grows more
        slowly than the first-order S over longer intervals). So q = 1 means "this sample changed
        exactly as much as S predicts for an average sample", q = 2 "twice as much". The factor follows
        c ← clamp(m·c + (1 − m)·q, low, high) with m = ``correction_momentum``, and the next
        decisions compare c·S with ε. Both S and rms(Δr) accumulate from the previous refresh, so
        every refresh after the first gives one observation per sample, reused or not in between.
        """
        if not self.config.correction or residual is None:
            return
        batch = rows.shape[0]
        if state.factor is None or state.factor.shape[0] != batch:
            return
        rows = rows.cpu().bool()
        idx = rows.nonzero().flatten()
        if idx.numel() == 0:
            return
        new = residual.detach().float()
        if state.residual_ref is None or state.residual_ref.shape[1:] != new.shape[1:]:
            state.residual_ref = new.new_zeros((batch, *new.shape[1:]))
            state.has_residual = torch.zeros(batch, dtype=torch.bool)
        prev = state.residual_ref.index_select(0, idx.to(new.device))
        real = inp.rms(new - prev).double().cpu()  # the whole residual, also when it is sharded
        s_pred = state.pending_s.index_select(0, idx)
        t_prev = state.pending_t.index_select(0, idx)
        gap = state.pending_gap.index_select(0, idx)
        had = state.has_residual.index_select(0, idx)
        ok = had & torch.isfinite(s_pred) & (s_pred > 0) & torch.isfinite(t_prev) & torch.isfinite(real) & (gap > 0)
        if bool(ok.any()):
            norm = self.normaliser_at(torch.where(ok, t_prev, torch.zeros_like(t_prev)), gap.clamp_min(1))
            q = real / (s_pred * norm)
            lo, hi = self.config.correction_bounds
            m = self.config.correction_momentum
            old = state.factor.index_select(0, idx)
            upd = (m * old + (1.0 - m) * q).clamp(lo, hi)
            state.factor[idx[ok]] = upd[ok]
            state.last_ratio[idx[ok]] = q[ok]
        state.residual_ref[idx.to(new.device)] = new
        state.has_residual[idx] = True
        state.pending_s[idx] = math.nan
