"""Budget mode: pick SenCache's ε for a target NFE by simulating the rule on calibration trajectories.

    config = sencache.budget.with_target(SenCacheConfig(profile), target_nfe=20)   # or target_speedup=2.5
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
an empirical question; :func:`sencache.harness.variants.measure_transfer` measures the achieved NFE on
held-out prompts. The per-sample correction (``correction=True``) is not simulated (its factor is taken as 1).

The replay itself is :mod:`sencache.core.replay`; the stored trajectories, :mod:`sencache.core.trajectories`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from sencache.core.default_rule import LOOP_AUTO, LOOP_HOLD, SCHEDULE, rule_for_profile
from sencache.core.loop_replay import solve_loop_eps
from sencache.core.replay import fixed_eps_start, solve_eps
from sencache.core.rules.sencache import SenCacheConfig
from sencache.core.schedule import DEFAULT_EPS_SCHEDULE, as_schedule
from sencache.core.trajectories import trajectories_of
from sencache.errors import SenCacheError

logger = logging.getLogger("sencache")


def with_target(config: SenCacheConfig, target_nfe: float | None = None, *,
                target_speedup: float | None = None) -> SenCacheConfig:
    """Budget mode: a copy of ``config`` whose ``eps`` makes the rule compute about ``target_nfe`` steps.

    The rule is replayed on the calibration trajectories stored in the profile (see the module docstring);
    ``config.budget`` of the result records the target, the chosen ε, the simulated NFE and its plateau.
    ``eps_start`` stays tied to ``eps / 10`` unless ``config`` fixed it. A target out of reach with these
    settings logs a warning and takes the nearest plateau. A config that left the rule to the default
    (``SenCacheConfig(profile)``: no ``loop``, ``forecast``, ``eps_schedule``, ``correction`` or ``target_psnr``
    given) gets the rule :mod:`sencache.core.default_rule` picks for the model's family and this budget;
    ``config.budget["rule_name"]`` says which.

    Args:
        config: the rule's settings (its ``eps`` is ignored, everything else is kept).
        target_nfe: computed steps wanted per generation (of the calibration grid's T steps).
        target_speedup: instead of ``target_nfe``: T / ``target_speedup`` computed steps.

    Returns:
        A new :class:`~sencache.SenCacheConfig`.
    """
    if target_nfe is not None and target_speedup is not None:
        raise SenCacheError("give target_nfe or target_speedup, not both")
    if target_nfe is None and target_speedup is None:
        raise SenCacheError("give target_nfe or target_speedup")
    traj = None if config.loop else trajectories_of(config.profile)
    T = config.profile.metadata["loop"]["num_inference_steps"] if config.loop else traj.num_steps
    if target_speedup is not None:
        x = target_speedup
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 1:
            raise SenCacheError(f"target_speedup must be a number >= 1 (got {x!r})")
        target = T / float(x)
    else:
        target = target_nfe
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise SenCacheError(f"target_nfe must be a number (got {target!r})")
    rule = None
    if config.rule_left_to_default:
        rule = rule_for_profile(config.profile, target, T)
        config = config_for_rule(config, rule)
    chosen = _solve(config, target, traj)
    chosen.budget["rule_name"] = rule or rule_of(chosen)
    chosen.budget["rule_picked_by"] = "the default per model family and budget" if rule else "the config"
    return chosen


def config_for_rule(config: SenCacheConfig, rule: str) -> SenCacheConfig:
    """``config`` with one of :data:`sencache.core.default_rule.RULES` made explicit (every other setting kept)."""
    eps_start = None if config.eps_start_tied else config.eps_start  # a tied eps_start stays tied
    if rule == SCHEDULE:
        return replace(config, loop=False, eps_start=eps_start)
    if rule in (LOOP_HOLD, LOOP_AUTO):
        return replace(config, loop=True, forecast="auto" if rule == LOOP_AUTO else "hold", eps_start=eps_start)
    raise SenCacheError(f"unknown rule {rule!r}; choose from {SCHEDULE}, {LOOP_HOLD}, {LOOP_AUTO}")


def rule_of(config: SenCacheConfig) -> str:
    """The name of ``config``'s rule (:data:`sencache.core.default_rule.RULES`; a configured ε-schedule rule is
    "schedule" too)."""
    if not config.loop:
        return SCHEDULE
    return LOOP_AUTO if config.forecast == "auto" else LOOP_HOLD


def _solve(config: SenCacheConfig, target: float, traj) -> SenCacheConfig:
    if config.loop:  # the closed loop replays on its own calibration runs
        result = solve_loop_eps(config, target)
        chosen = replace(config, eps=result["eps"], budget=result)
        _warn_out_of_reach(config, target, result, chosen.eps)
        return chosen
    traj = traj if traj is not None else trajectories_of(config.profile)
    note = config.profile.check_covers(traj.timesteps, what="the stored calibration trajectories")
    if note:
        logger.warning(note)
    given = fixed_eps_start(config)
    result = solve_eps(config, target, traj, eps_start=given)
    result["eps_start_given"] = given is not None
    chosen = replace(config, eps=result["eps"], eps_start=given, budget=result)
    _warn_out_of_reach(config, target, result, chosen.eps)
    return chosen


def budget_steps(profile) -> int | None:
    """The step count the profile's calibration runs (what budget mode replays) were measured at, or None."""
    loop = profile.metadata.get("loop")
    if isinstance(loop, dict) and isinstance(loop.get("num_inference_steps"), int):
        return loop["num_inference_steps"]
    steps = len((profile.metadata.get("trajectories") or {}).get("timesteps") or [])
    return steps or None


def _warn_out_of_reach(config, target: float, result: dict, eps: float) -> None:
    if abs(result["simulated_nfe"] - target) > 0.5:
        lo, hi = result["reachable_nfe"]
        logger.warning(
            f"sencache: target NFE {target:g} is out of reach with max_reuse={config.max_reuse}, "
            f"final_steps={config.final_steps} (simulated NFE spans {lo:g}..{hi:g}); using eps={eps:.4g} "
            f"(simulated NFE {result['simulated_nfe']:g})")


def recommend(profile, target_nfe: float, **config_kwargs) -> dict:
    """Solve ε for ``target_nfe`` with the default rule settings and store it in ``profile.metadata``
    (``recommended_eps``, ``target_nfe``, ``budget``). Returns the budget dict."""

    if "target_psnr" not in config_kwargs:  # the ε a plain SenCacheConfig(profile) uses: the ε-schedule rule's
        config_kwargs.setdefault("loop", False)
    config = with_target(SenCacheConfig(profile, **config_kwargs), float(target_nfe))
    budget = dict(config.budget)
    if config.loop:
        profile.metadata["loop"].update(recommended_eps=config.eps, target_nfe=float(target_nfe), budget=budget)
        return budget
    profile.metadata["recommended_eps"] = config.eps
    profile.metadata["target_nfe"] = float(target_nfe)
    profile.metadata["budget"] = budget
    return budget


def _check_solved_steps(profile, loop: bool, num_inference_steps: int | None) -> None:
    meta = profile.metadata
    stored = (meta.get("loop") or {}) if loop else meta
    if num_inference_steps is None or "recommended_eps" not in stored:
        return
    solved = stored.get("num_inference_steps") if loop else \
        len((meta.get("trajectories") or {}).get("timesteps") or []) or meta.get("num_inference_steps")
    if isinstance(solved, int) and solved != int(num_inference_steps):
        nfe = stored.get("target_nfe")
        raise SenCacheError(
            f"the profile's recommended eps was solved for {solved} steps"
            + (f" (NFE {nfe:g})" if isinstance(nfe, (int, float)) else "")
            + f", not {num_inference_steps}: pass an eps (--eps), keep {solved} steps, or calibrate on "
              f"{num_inference_steps} steps (`sencache calibrate --steps {num_inference_steps}`)")


def recommended_eps(profile, default: float | None = None, num_inference_steps: int | None = None) -> float | None:
    """The profile's ``recommended_eps`` for the default rule, or ``default`` when it has none.

    The stored ε was solved for the calibration's step count; asked for another ``num_inference_steps`` it would
    give a different NFE than it promises, so that is refused with what to do instead.

    A profile written before the default rule changed (its ε schedule, or what reusing samples get) holds an
    ε solved for another rule, which would miss its NFE target; when it still holds its calibration
    trajectories, ε is solved again here for the stored ``target_nfe`` (an offline replay, no model call),
    with a log line saying so."""
    meta = profile.metadata
    loop = SenCacheConfig(profile, eps=0.0).loop
    _check_solved_steps(profile, loop, num_inference_steps)
    if loop:  # the closed loop keeps its own tolerance
        eps = (meta.get("loop") or {}).get("recommended_eps")
        return float(eps) if isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0 else default
    eps = meta.get("recommended_eps")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        return default
    default_rule = SenCacheConfig(profile, loop=False)  # ε mode (no budget to pick a rule by)
    current = {"eps_schedule": as_schedule(DEFAULT_EPS_SCHEDULE).to_dict(), "forecast": default_rule.forecast}
    budget = meta.get("budget") or {}
    solved_for = {"eps_schedule": budget.get("eps_schedule", current["eps_schedule"]),
                  "forecast": budget.get("forecast", "hold")}
    target = meta.get("target_nfe")
    if solved_for == current or not isinstance(target, (int, float)) or "trajectories" not in meta:
        return float(eps)
    eps = with_target(default_rule, float(target)).eps
    logger.info("the profile's recommended_eps was solved for eps schedule %s (forecast %s); solved again for %s "
                "(forecast %s) at target NFE %g: eps %.4g", (solved_for["eps_schedule"] or {}).get("name", "constant"),
                solved_for["forecast"], current["eps_schedule"]["name"], current["forecast"], target, eps)
    return float(eps)
