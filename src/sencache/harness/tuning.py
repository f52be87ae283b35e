"""Picking a method's threshold for a target NFE, on calibration prompts only: a bisection on the measured NFE
(geometric for thresholds, integer for intervals), with runs shared between targets."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from sencache.adapter.hooks import quiet_sencache
from sencache.core.default_rule import RULES
from sencache.errors import SenCacheError
from sencache.methods import MethodContext, get_method
from sencache.methods.base import default_rule_for
from sencache.runtime.generation import generate

# --------------------------------------------------------------------------------------------------
# Picking a threshold for a target NFE (on calibration prompts)
# --------------------------------------------------------------------------------------------------


def measure_nfe(pipe, method: str, value, ctx: MethodContext, prompts: Sequence[str], seeds: Sequence[int],
                guidance_scale: float = 5.0) -> float:

    """The mean NFE ``method`` at ``value`` reaches on ``prompts`` x ``seeds`` (no reference run)."""
    spec = get_method(method)
    nfes = []
    for p in prompts:
        for s in seeds:
            with spec.apply(pipe, value, ctx) as handle, quiet_sencache():
                generate(pipe, p, s, num_inference_steps=ctx.num_inference_steps, guidance_scale=guidance_scale)
                nfes.append(float(handle.stats()["nfe"]))
    return float(np.mean(nfes))


def tune_threshold(pipe, method: str, target_nfe: float, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                   ctx: MethodContext | None = None, guidance_scale: float = 5.0, iterations: int = 7,
                   bounds: tuple[float, float] | None = None, cache: dict | None = None) -> dict:
    """The setting of ``method`` whose mean NFE on ``prompts`` comes closest to ``target_nfe``.

    NFE falls as the threshold rises, so a bisection (geometric for thresholds, integer for intervals)
    brackets the target. Use calibration prompts here, never the evaluation prompts.
    Returns {"method", "value", "nfe", "target_nfe", "evaluations": [[value, nfe], ...]}. Pass the same
    ``cache`` dict to several calls (same method, prompts and steps) to share the runs between targets.
    """
    ctx = ctx or MethodContext()
    spec = get_method(method)
    if spec.param is None:
        raise SenCacheError(f"{method} has no threshold to tune")
    seen: dict = cache if cache is not None else {}

    def nfe(v):
        v = spec.coerce(v)
        if v not in seen:
            seen[v] = measure_nfe(pipe, method, v, ctx, prompts, seeds, guidance_scale)
        return seen[v]

    if spec.integer:
        lo, hi = (int(bounds[0]), int(bounds[1])) if bounds else (1, max(2, ctx.num_inference_steps // 2))
        while hi - lo > 1 and len(seen) < iterations + 2:
            mid = (lo + hi) // 2
            if nfe(mid) > target_nfe:
                lo = mid
            else:
                hi = mid
        nfe(lo), nfe(hi)
    else:
        lo, hi = bounds if bounds else (float(f"{min(spec.sweep) / 4:.3g}"), float(f"{max(spec.sweep) * 4:.3g}"))
        for _ in range(3):  # widen until the bracket holds the target
            if nfe(lo) < target_nfe:
                lo /= 8
            elif nfe(hi) > target_nfe:
                hi *= 8
            else:
                break
        for _ in range(iterations):
            mid = float(f"{math.sqrt(lo * hi):.3g}")  # 3 significant digits: the stored value is the one measured
            if mid in (lo, hi):
                break
            if nfe(mid) > target_nfe:
                lo = mid
            else:
                hi = mid
            if nfe(mid) == target_nfe:
                break
    best = min(seen.items(), key=lambda kv: (abs(kv[1] - target_nfe), kv[1] > target_nfe, kv[0]))
    return {"method": method, "value": best[0], "nfe": best[1], "target_nfe": float(target_nfe),
            "num_inference_steps": ctx.num_inference_steps, "prompts": list(prompts), "seeds": [int(s) for s in seeds],
            "evaluations": sorted([[k, v] for k, v in seen.items()])}


def tune_values(pipe, methods: Sequence[str], targets: Sequence[float], prompts: Sequence[str],
                seeds: Sequence[int] = (0,), ctx: MethodContext | None = None, guidance_scale: float = 5.0,
                progress: bool = True) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """Per method, the thresholds that hit each target NFE on ``prompts`` (calibration prompts).

    Returns (values for :func:`sencache.harness.compare.compare`, the tuning records). Methods without a threshold,
    and methods that cannot run on ``pipe`` (which compare records as skipped, with the reason), are left out.

    ``sencache`` runs, at each target, the rule budget mode picks for it (:mod:`sencache.core.default_rule`); every
    rule some target picks is tuned at *every* target, so that each rule has its own curve to read at equal NFE
    (:func:`sencache.harness.equal_nfe.equal_nfe` reads each target off its own rule's curve). Its values are
    ``{"rule": r, "value": v}``, its records carry ``rule`` and ``default_for_target`` (whether budget mode picks
    ``rule`` at that target).
    """
    values, records = {}, {}
    ctx = ctx or MethodContext()
    todo = [m for m in methods if (spec := get_method(m)).param is not None and spec.unavailable(ctx, pipe) is None]
    rules_of = {m: rules_needed(ctx, targets) if get_method(m).budget_aware else [None] for m in todo}
    bar = tqdm(total=sum(len(r) for r in rules_of.values()) * len(targets), desc="tune thresholds",
               disable=not progress, leave=False)
    for m in todo:
        records[m] = []
        for rule in rules_of[m]:
            cache: dict = {}  # runs are shared between the targets of one rule
            rule_ctx = ctx if rule is None else replace(ctx, rule=rule)
            for target in targets:
                found = tune_threshold(pipe, m, target, prompts, seeds, rule_ctx, guidance_scale, cache=cache)
                if rule is not None:
                    found.update(rule=rule, default_for_target=default_rule_for(ctx, target) == rule)
                records[m].append(found)
                bar.update(1)
        if rules_of[m] == [None]:
            values[m] = list(dict.fromkeys(r["value"] for r in records[m]))
        else:
            values[m] = [dict(t) for t in dict.fromkeys((("rule", r["rule"]), ("value", r["value"]))
                                                       for r in records[m])]
    bar.close()
    return values, records


def rules_needed(ctx: MethodContext, targets: Sequence[float]) -> list[str]:
    """The rules ``sencache`` runs at some of ``targets`` (in the order of :data:`sencache.core.default_rule.RULES`)."""
    picked = {default_rule_for(ctx, float(t)) for t in targets}
    return [r for r in RULES if r in picked]
