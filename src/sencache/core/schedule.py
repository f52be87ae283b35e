"""ε schedules: the shape g of the post-warm-up threshold ε(step) = eps · g(step / (T − 1)).

One definition, used by the online rule (:meth:`SenCacheConfig.eps_at`) and the offline replay alike.
The default, ``"power2"`` (g = ((1 + s) / 1.5)², 0.44 at the start, 1.78 at the end), is stricter early and
looser late; ``"constant"`` is the paper's fixed ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sencache.errors import SenCacheError


# --------------------------------------------------------------------------------------------
# ε schedules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpsSchedule:
    """A shape g(s) ≥ 0 over normalised time s = step / (T − 1) ∈ [0, 1]; ε(step) = eps · g(s) (g unit-free).

    Args:
        kind: "knots" or "power".
        knots: ((s, g), ...) for "knots".
        p: the exponent for "power".
        name: shown in results and budgets.

    kinds:
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
        """g ≡ 1: the paper's fixed ε."""
        return cls("knots", ((0.0, 1.0), (1.0, 1.0)), name="constant")

    @classmethod
    def linear(cls, a: float, b: float, name: str = "") -> "EpsSchedule":
        """g(s) = a + b·s."""
        return cls("knots", ((0.0, a), (1.0, a + b)), name=name or f"linear({a:g},{b:+g})")

    @classmethod
    def power(cls, p: float, name: str = "") -> "EpsSchedule":
        """g(s) = ((1 + s) / 1.5) ** p."""
        return cls("power", p=p, name=name or f"power({p:g})")

    @classmethod
    def from_knots(cls, knots, name: str = "") -> "EpsSchedule":
        """Piecewise-linear through ``knots`` ((s, g), ...)."""
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
        """g at ``step`` of ``num_steps`` (s = step / (T − 1))."""
        return self(step / (num_steps - 1) if num_steps > 1 else 0.0)

    def to_dict(self) -> dict:
        """The JSON-able form (what results and budgets record; :func:`as_schedule` reads it back)."""
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


DEFAULT_EPS_SCHEDULE = "power2"  # beat the paper's constant eps at equal NFE on every demo model (docs/results.md)


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


def tied_eps_start(eps):
    """The warm-up threshold tied to ``eps``: eps / 10 (the paper's ratio for Wan); inf stays inf.
    Works on floats and numpy arrays."""
    if isinstance(eps, np.ndarray):
        return np.where(np.isfinite(eps), eps / 10, eps)
    return eps / 10 if math.isfinite(eps) else eps


def threshold(eps, eps_start, step: int, num_steps: int, warmup_steps: int, schedule: EpsSchedule | None):
    """The ε in force at ``step`` of ``num_steps``: ``eps_start`` in the first ``warmup_steps`` steps, then
    ``eps · g(step / (T − 1))`` (g = 0 forbids reuse there, even with eps = inf). The online rule and the
    offline replay both call this; ``eps`` may be a float or a numpy array of candidates."""
    if step < warmup_steps:
        return eps_start
    if schedule is None:
        return eps
    g = schedule.factor(step, num_steps)
    if g > 0:
        return eps * g
    return np.zeros_like(eps) if isinstance(eps, np.ndarray) else 0.0
