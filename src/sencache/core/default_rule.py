"""Which SenCache rule a budget gets by default: one choice per model family and budget, made on design prompts.

No single rule of ours won every family and budget (docs/closed_loop.md): on Wan the closed loop that holds keeps
the tail at low budgets where the ε-schedule rule breaks clips, on LTX the loop that may forecast wins the lowest
budgets, and on CogVideoX the ε-schedule rule wins everywhere. So budget mode (``with_target``) and the comparison's
``sencache`` at a target NFE pick the rule from :data:`DEFAULT_RULES`, a table chosen on each family's 4 design prompts
only (docs/design_families; :func:`choose_rules` is the choice, ``scripts/choose_default_rules.py`` rebuilds it).
A budget given as ε alone has no NFE to look up and keeps the ε-schedule rule.
"""

from __future__ import annotations

from typing import Mapping, Sequence

SCHEDULE = "schedule"  # the ε-schedule rule (SenCacheConfig(profile, loop=False))
LOOP_HOLD = "loop-hold"  # the closed loop, holding the cached residual
LOOP_AUTO = "loop-auto"  # the closed loop, holding or forecasting by the smaller learned error
RULES = (SCHEDULE, LOOP_HOLD, LOOP_AUTO)

# The design budgets (NFE of 50) the table was chosen at, as fractions of the steps.
DESIGN_FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7)

# family -> rule per design budget (DESIGN_FRACTIONS); a family not listed keeps the ε-schedule rule.
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "wan": (LOOP_HOLD, LOOP_HOLD, LOOP_HOLD, SCHEDULE, SCHEDULE),
    "ltx": (LOOP_AUTO, LOOP_AUTO, SCHEDULE, SCHEDULE, SCHEDULE),
    "cogvideox": (SCHEDULE, SCHEDULE, SCHEDULE, SCHEDULE, SCHEDULE),
}

# transformer class name (as profiles record it) -> family
FAMILIES = {
    "WanTransformer3DModel": "wan",
    "WanVACETransformer3DModel": "wan",
    "LTXVideoTransformer3DModel": "ltx",
    "CogVideoXTransformer3DModel": "cogvideox",
}

SWITCH_MARGIN_DB = 1.0  # a rule replaces the one already chosen only when it scores this much higher


def family_of(model_class: str | None) -> str | None:
    """The family of a transformer class name, or None for one the table does not cover."""
    return FAMILIES.get(str(model_class)) if model_class is not None else None


def rule_for(family: str | None, target_nfe: float, num_inference_steps: int) -> str:
    """The default rule for ``target_nfe`` of ``num_inference_steps`` on ``family``: the choice at the nearest
    design budget (in fractions of the steps); the ε-schedule rule where the family has no entry."""
    rules = DEFAULT_RULES.get(family or "")
    if rules is None or num_inference_steps <= 0:
        return SCHEDULE
    fraction = float(target_nfe) / float(num_inference_steps)
    nearest = min(range(len(DESIGN_FRACTIONS)), key=lambda i: (abs(DESIGN_FRACTIONS[i] - fraction), i))
    return rules[nearest]


def rule_for_profile(profile, target_nfe: float, num_inference_steps: int) -> str:
    """:func:`rule_for` for a profile's model; a loop rule only where the profile carries the loop's calibration."""
    meta = profile.metadata
    rule = rule_for(family_of(meta.get("model_class")), target_nfe, num_inference_steps)
    has_loop = "gain" in profile.curves and isinstance(meta.get("loop"), dict)
    return rule if rule == SCHEDULE or has_loop else SCHEDULE


def score(mean: float | None, p10: float | None) -> float | None:
    """What the choice ranks rules by at one budget: the mean of mean PSNR and 10th-percentile PSNR (dB)."""
    return None if mean is None or p10 is None else (float(mean) + float(p10)) / 2.0


def choose_rules(rows: Mapping[str, Mapping[str, Sequence[float | None]]], incumbent: str = SCHEDULE) -> list[str]:
    """The rule per budget from equal-NFE rows ``{rule: {"psnr": [...], "psnr_p10": [...]}}`` (None: not reached).

    At each budget the rules that reached it are ranked by :func:`score`; the rule chosen at the budget before
    (at the first, ``incumbent``) stays unless another scores more than :data:`SWITCH_MARGIN_DB` higher, so that
    noise between near-equal rules does not make the choice flip from budget to budget."""
    n = len(next(iter(rows.values()))["psnr"])
    chosen, current = [], incumbent
    for i in range(n):
        scores = {r: s for r, row in rows.items() if (s := score(row["psnr"][i], row["psnr_p10"][i])) is not None}
        if not scores:
            chosen.append(current)
            continue
        best = max(scores, key=scores.get)
        if current not in scores or scores[best] > scores[current] + SWITCH_MARGIN_DB:
            current = best
        chosen.append(current)
    return chosen
