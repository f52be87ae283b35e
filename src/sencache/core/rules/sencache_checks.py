"""The settings checks of :class:`~sencache.SenCacheConfig`: each left-open setting resolved, each out-of-range one
refused with what to do (a clear error at construction, never mid-generation)."""

from __future__ import annotations

import math

from sencache.core.correction import correction_normaliser
from sencache.core.loop import loop_calibration
from sencache.core.loop_replay import eps_for_psnr
from sencache.core.schedule import as_schedule, tied_eps_start
from sencache.errors import SenCacheError

FORECASTS = ("hold", "linear", "auto")  # what a reusing sample gets (SenCacheConfig.forecast)


def settle(config, name: str, value) -> None:
    """Set a setting the config resolved at construction (the config is frozen: nothing changes it afterwards)."""
    object.__setattr__(config, name, value)


def check_settings(config) -> None:
    """Resolve the left-open settings of a :class:`~sencache.SenCacheConfig` (loop, ε, forecast, ε_start) and refuse
    the ones out of range, with what to do."""
    resolve_loop(config)
    settle(config, "eps_schedule", as_schedule(config.eps_schedule))
    if config.forecast is None:  # the default: forecast by predicted error where the profile allows it
        settle(config, "forecast", "auto" if "jtt" in config.profile.curves else "hold")
    if config.forecast not in FORECASTS:
        raise SenCacheError(f"forecast must be one of {', '.join(FORECASTS)} (got {config.forecast!r})")
    if config.forecast == "auto" and not config.loop:  # the loop learns its forecast error (jtt optional)
        config.profile.lookup_curve("jtt", [0.0])  # fail now, not mid-generation
    if config.forecast_guard is not None:
        g = config.forecast_guard
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 0:
            raise SenCacheError(f"forecast_guard must be a number > 0 or None (got {g!r})")
        if config.forecast != "auto":
            raise SenCacheError(f"forecast_guard bounds forecast=\"auto\" only (forecast is {config.forecast!r})")
    check_correction(config)
    settle(config, "eps_start_tied", config.eps_start is None)
    if config.eps_start is None:
        settle(config, "eps_start", tied_eps_start(config.eps) if isinstance(config.eps, (int, float)) else config.eps)
    for field_name in ("eps", "eps_start"):
        value = getattr(config, field_name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise SenCacheError(f"{field_name} must be a number >= 0 (got {value!r}); 0 disables reuse")
    if not 0.0 <= config.warmup_fraction <= 1.0:
        raise SenCacheError(f"warmup_fraction must be in [0, 1] (got {config.warmup_fraction!r})")
    if not isinstance(config.max_reuse, int) or config.max_reuse < 0:
        raise SenCacheError(f"max_reuse must be an integer >= 0 (got {config.max_reuse!r}); 0 disables reuse")
    if not isinstance(config.final_steps, int) or config.final_steps < 0:
        raise SenCacheError(f"final_steps must be an integer >= 0 (got {config.final_steps!r})")


def resolve_loop(config) -> None:
    """Resolve ``loop`` and, for the closed loop, ``eps`` (given, for ``target_psnr``, or the profile's)."""
    has_gain = "gain" in config.profile.curves and isinstance(config.profile.metadata.get("loop"), dict)
    if config.loop is None:  # opt-in: the quality target asks for it
        settle(config, "loop", config.target_psnr is not None and has_gain)
    m = config.learn_momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
        raise SenCacheError(f"learn_momentum must be in [0, 1) (got {m!r})")
    p = config.target_psnr
    if p is not None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise SenCacheError(f"target_psnr must be a number of dB > 0 (got {p!r})")
        if not config.loop:
            raise SenCacheError("target_psnr needs the closed-loop rule: a profile with the clip-error gain "
                                "(measured by `sencache calibrate`)")
    if not config.loop:
        if config.eps is None:
            settle(config, "eps", 0.1)
        return
    loop_calibration(config.profile)  # a clear error now, not mid-generation
    if config.forecast is None:  # the closed loop holds: its learned forecasts lost on the design prompts
        settle(config, "forecast", "hold")
    if config.eps is None:
        if p is not None:
            settle(config, "eps", eps_for_psnr(config, p))
        else:
            settle(config, "eps", config.profile.metadata["loop"].get("recommended_eps", 0.0))


def check_correction(config) -> None:
    """Refuse correction bounds or momentum out of range; with ``correction`` the profile must have the normaliser."""
    try:
        lo, hi = (float(v) for v in config.correction_bounds)
    except (TypeError, ValueError):
        raise SenCacheError(f"correction_bounds must be (low, high) (got {config.correction_bounds!r})") from None
    if not (0 < lo <= 1.0 <= hi < math.inf):
        raise SenCacheError(f"correction_bounds must satisfy 0 < low <= 1 <= high < inf (got {(lo, hi)})")
    settle(config, "correction_bounds", (lo, hi))
    m = config.correction_momentum
    if not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
        raise SenCacheError(f"correction_momentum must be in [0, 1) (got {m!r})")
    if config.correction:
        correction_normaliser(config.profile)  # fail now, not mid-generation
