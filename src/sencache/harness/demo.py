"""The demo's run: SenCache next to MagCache and TeaCache at about the same NFE, on held-out prompts.

1. Pick each method's threshold for about ``target`` x T computed steps: stored in ``baselines.json`` by an
   earlier run, or found now by a short bisection on a *calibration* prompt (never an evaluation prompt).
2. Run the uncached reference and the three methods on the held-out prompts (one seed), and write
   ``side_by_side.mp4``/``.gif``, ``report.html``, ``results.json`` (and the plots).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from sencache.core.default_rule import SCHEDULE, rule_for_profile
from sencache.core.rules.sencache import SenCacheConfig
from sencache.core.schedule import DEFAULT_EPS_SCHEDULE
from sencache.errors import SenCacheError
from sencache.harness.compare import compare
from sencache.harness.tuning import tune_threshold
from sencache.methods import MethodContext, get_method
from sencache.methods.base import default_rule_for
from sencache.report.page import write_report

DEMO_METHODS = ("magcache", "teacache", "sencache")
SEED_PAGE_METHODS = ("magcache-fast", "sencache")  # the project page's columns


def setting_key(method: str, steps: int, target_nfe: float, guidance: float, profile) -> str:
    """Where a tuned threshold is stored in ``baselines.settings``: it holds for one method, step count, target,
    guidance (and, for SenCache, one profile and the rule it runs at that target)."""
    key = f"{method}|T={steps}|nfe={target_nfe:g}|g={guidance:g}"
    if method == "sencache" and profile is not None:
        rule = rule_for_profile(profile, target_nfe, steps)
        data = profile.to_dict()
        if rule == SCHEDULE:  # the closed loop's calibration does not change the ε-schedule rule's threshold
            data["curves"] = {k: v for k, v in data.get("curves", {}).items() if k != "gain"}
            data["metadata"] = {k: v for k, v in data.get("metadata", {}).items() if k != "loop"}
            rule = f"forecast={SenCacheConfig(profile, eps=0.0, loop=False).forecast}|schedule={DEFAULT_EPS_SCHEDULE}"
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
        key += f"|profile={digest}|{rule}"  # one rule's threshold
    return key


def pinned(found: dict):
    """What :func:`sencache.harness.compare.compare` is given for one tuned method: its value (with its rule)."""
    return {"rule": found["rule"], "value": found["value"]} if found.get("rule") else found["value"]


def choose_settings(pipe, baselines, baselines_path, profile, methods, steps: int, target_nfe: float,
                    guidance: float, retune: bool = False, log=print) -> dict[str, dict]:
    """Threshold per method for ``target_nfe``: stored in the baselines, or tuned on a calibration prompt."""

    ctx = MethodContext(num_inference_steps=steps, profile=profile, baselines=baselines)
    prompts, seeds = baselines.calibration_prompts[:1], baselines.calibration_seeds[:1]
    chosen, changed = {}, False
    for method in methods:
        key = setting_key(method, steps, target_nfe, guidance, profile)
        stored = baselines.settings.get(key)
        if stored is not None and not retune:
            chosen[method] = stored
            continue
        start = time.perf_counter()
        rule = default_rule_for(ctx, target_nfe) if get_method(method).budget_aware else None
        run_ctx = ctx if rule is None else replace(ctx, rule=rule)
        found = tune_threshold(pipe, method, target_nfe, prompts, seeds, run_ctx, guidance_scale=guidance,
                               iterations=6)
        if rule is not None:
            found["rule"] = rule
        found["seconds"] = round(time.perf_counter() - start, 1)
        param = get_method(method).param
        log(f"  {method}{f' ({rule} rule)' if rule else ''}: {param} {found['value']:g} gives NFE {found['nfe']:g} "
            f"on the calibration prompt ({len(found['evaluations'])} runs, {found['seconds']:.0f} s)")
        baselines.settings[key] = found
        chosen[method] = found
        changed = True
    if changed:
        try:
            baselines.save(baselines_path)
        except OSError as exc:
            log(f"  (could not store the thresholds in {baselines_path}: {exc.strerror or exc})")
    return chosen


def run_demo(pipe, profile, baselines, baselines_path, prompts: Sequence[str], out_dir, steps: int = 50,
             seed: int = 0, target: float = 0.5, guidance: float = 5.0, profile_path=None, retune: bool = False,
             use_lpips: bool | None = None, model: str | None = None, log=print, progress: bool = True,
             methods: Sequence[str] = DEMO_METHODS) -> dict:
    """SenCache, MagCache and TeaCache next to the uncached reference at about ``target`` x ``steps`` NFE.

    Each method's threshold is the one stored in ``baselines`` for this setting, or found now by a short
    bisection on the first calibration prompt of ``baselines`` (never on ``prompts``, the held-out ones).
    Writes ``side_by_side.mp4``/``.gif``, ``report.html`` and ``results.json`` into ``out_dir``; returns the
    results dict (``results["demo"]`` holds the tuning).
    """
    if not prompts:
        raise SenCacheError("the demo needs at least one held-out prompt")
    if steps < 4:
        raise SenCacheError("--steps must be at least 4")
    if not 0.0 < target <= 1.0:
        raise SenCacheError("--target must be a fraction of the steps in (0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    target_nfe = round(target * steps)
    log(f"choosing thresholds for about {target_nfe} of {steps} computed steps (calibration prompt only):")
    chosen = choose_settings(pipe, baselines, baselines_path, profile, methods, steps, target_nfe, guidance,
                             retune=retune, log=log)
    values = {m: pinned(chosen[m]) for m in methods}
    log("  " + ", ".join(f"{m} {chosen[m]['value']:g} (NFE {chosen[m]['nfe']:g} on calibration)" for m in methods))
    log(f"running uncached + {', '.join(methods)} on {len(prompts)} held-out prompt(s), seed {seed}")
    results = compare(pipe, prompts, [seed], list(methods), num_inference_steps=steps,
                      guidance_scale=guidance, out_dir=out, profile=profile, baselines=baselines, values=values,
                      use_lpips=use_lpips, progress=progress, model=model, profile_path=profile_path,
                      baselines_path=baselines_path)
    results["demo"] = {"target_nfe": target_nfe, "tuning": {m: chosen[m] for m in methods},
                       "seconds": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    files = write_report(out, results)
    results["files"] = {**results.get("files", {}), **{k: str(v) for k, v in files.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return results


