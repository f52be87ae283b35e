"""Methods at equal cost: each method's fidelity interpolated to the same NFE along its own curve.

Every method's settings give points (mean NFE, mean PSNR / SSIM / LPIPS) over the same prompt x seed jobs.
Sorted by NFE and joined by straight lines they form the method's curve; reading every curve at the same
NFE targets compares methods at equal compute even when their bisected thresholds landed a little apart.
A target outside a method's measured NFE range is reported as unreachable, never read off another NFE.
The "area" summary is the mean interpolated PSNR over the targets a method reaches. The tail (10th-percentile and
worst-pair PSNR, worst-pair LPIPS) is interpolated the same way; the broken-clip and schedule counts, being
whole numbers, are read off the setting nearest in NFE.

A method that runs a different rule per budget (``sencache``: see :mod:`sencache.core.default_rule`) is read at each
target off the curve of the rule its tuning chose for that target, never off a line between two rules; each of its
rules also gets a row of its own ("sencache · loop-hold").
"""

from __future__ import annotations

import numpy as np

from sencache.core.default_rule import SCHEDULE
from sencache.statistics.tails import BROKEN_PSNR_DB, with_tails
from sencache.toolbox.numbers import fmt_number

METRICS = ("psnr", "ssim", "lpips")
TAIL_METRICS = ("psnr_p10", "psnr_min", "lpips_max")  # interpolated along the curve, like the means
COUNTS = ("broken", "schedules")  # whole counts: read off the setting nearest in NFE


def curve(entry: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(NFE, metric) points of one method's settings, sorted by NFE, settings without the metric left out
    (several settings at the same NFE are averaged)."""
    points: dict[float, list[float]] = {}
    for s in entry.get("settings", []):
        if s.get("nfe") is None or s.get(metric) is None:
            continue
        points.setdefault(float(s["nfe"]), []).append(float(s[metric]))
    nfe = np.array(sorted(points), dtype=np.float64)
    return nfe, np.array([np.mean(points[n]) for n in nfe], dtype=np.float64)


def at_nfe(entry: dict, metric: str, target: float) -> float | None:
    """The method's ``metric`` interpolated to ``target`` NFE; None when the target is outside its NFE range."""
    nfe, values = curve(entry, metric)
    if nfe.size == 0 or target < nfe[0] - 1e-9 or target > nfe[-1] + 1e-9:
        return None
    return float(np.interp(target, nfe, values))


def nearest_at(entry: dict, key: str, target: float) -> int | None:
    """``key`` of the setting whose NFE is nearest ``target``; None when the target is outside the NFE range."""
    settings = [s for s in entry.get("settings", []) if s.get("nfe") is not None and s.get(key) is not None]
    if not settings:
        return None
    nfes = [float(s["nfe"]) for s in settings]
    if target < min(nfes) - 1e-9 or target > max(nfes) + 1e-9:
        return None
    return int(min(settings, key=lambda s: abs(float(s["nfe"]) - target))[key])


def setting_rule(setting: dict) -> str:
    """The rule one setting ran (settings without one ran the ε-schedule rule)."""
    return setting.get("rule") or SCHEDULE


def rules_by_target(results: dict, name: str) -> dict[float, str]:
    """{target NFE: rule} from the tuning of a method that picks its rule per budget; empty for the others."""
    return {float(r["target_nfe"]): r["rule"] for r in results.get("tuning", {}).get(name, [])
            if isinstance(r, dict) and r.get("default_for_target") and r.get("rule")}


def only_rule(entry: dict, rule: str) -> dict:
    """``entry`` with only the settings of ``rule``."""
    return {**entry, "settings": [s for s in entry.get("settings", []) if setting_rule(s) == rule]}


def _row(entry: dict, targets, rule_at=None) -> dict:
    def part(t):  # the curve the target is read off
        return entry if rule_at is None else only_rule(entry, rule_at.get(float(t), SCHEDULE))
    row = {m: [at_nfe(part(t), m, float(t)) for t in targets] for m in METRICS + TAIL_METRICS}
    row.update({k: [nearest_at(part(t), k, float(t)) for t in targets] for k in COUNTS})
    for metric, summary in (("psnr", "mean_psnr"), ("psnr_p10", "mean_psnr_p10")):
        reached = [v for v in row[metric] if v is not None]
        row[summary] = float(np.mean(reached)) if len(reached) == len(targets) else None
    if rule_at is not None:
        row["rule"] = [rule_at.get(float(t), SCHEDULE) for t in targets]
    return row


def equal_nfe(results: dict, targets) -> dict:
    """``{method: {"psnr": [v or None per target], "ssim", "lpips", "psnr_p10", "psnr_min", "lpips_max",
    "broken", "schedules": [...], "mean_psnr": m or None, "mean_psnr_p10": m or None}}`` for every method of a
    :func:`sencache.harness.compare.compare` result that ran (tail fields filled in where missing)."""
    with_tails(results)
    out = {}
    for name, entry in results["methods"].items():
        if not entry.get("available", True) or entry.get("param") is None:
            continue
        rule_at = rules_by_target(results, name)
        rules = sorted({setting_rule(s) for s in entry.get("settings", [])})
        if not rule_at or len(rules) < 2:  # one rule: one curve
            out[name] = _row(entry, targets)
            continue
        out[name] = _row(entry, targets, rule_at)
        for rule in rules:
            out[f"{name} · {rule}"] = _row(only_rule(entry, rule), targets)
    return out


def _best(table: dict, metric: str, i: int, low: bool = False) -> float | None:
    values = [r[metric][i] for r in table.values() if r[metric][i] is not None]
    return (min if low else max)(values, default=None)


def _bold_if(text: str, value, best) -> str:
    return f"**{text}**" if best is not None and value is not None and abs(value - best) < 1e-9 else text


def equal_nfe_table(results: dict, targets) -> str:
    """Two markdown tables at each target NFE: mean / 10th-percentile PSNR (mean LPIPS), and the worst pair's PSNR
    (LPIPS) with the broken-clip count and the number of distinct schedules; the best per column in bold, "–"
    where a method cannot reach the target."""
    table = equal_nfe(results, targets)
    n = len(targets)
    pairs = len(results.get("jobs", []))
    head = ["method"] + [f"NFE {t:g}" for t in targets]
    lines = [f"PSNR dB interpolated to equal NFE of {results['num_inference_steps']} steps along each method's own "
             f"curve, over {pairs} prompt x seed pairs; – = outside the NFE range the method reached.", "",
             "**Mean / 10th-percentile PSNR (mean LPIPS)**", "",
             "| " + " | ".join(head + ["mean over budgets"]) + " |", "|" + "---|" * (len(head) + 1)]
    best_mean = [_best(table, "psnr", i) for i in range(n)]
    best_p10 = [_best(table, "psnr_p10", i) for i in range(n)]
    for name, row in table.items():
        cells = [name]
        for i in range(n):
            p, q, lp = row["psnr"][i], row["psnr_p10"][i], row["lpips"][i]
            if p is None:
                cells.append("–")
                continue
            text = _bold_if(f"{p:.2f}", p, best_mean[i]) + " / " + _bold_if(fmt_number(q, ".2f"), q, best_p10[i])
            cells.append(text + (f" ({lp:.4f})" if lp is not None else ""))
        means = (row["mean_psnr"], row["mean_psnr_p10"])
        cells.append(" / ".join(fmt_number(v, ".2f") for v in means) if means[0] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for name, row in table.items():
        if "rule" in row:
            lines += ["", f"{name}: the rule at each target (read off that rule's own curve): "
                      + ", ".join(f"NFE {t:g} {r}" for t, r in zip(targets, row["rule"]))]
    lines += ["", f"**Worst pair: PSNR (LPIPS); broken clips (PSNR < {BROKEN_PSNR_DB:g} dB); distinct schedules over "
              f"{pairs} pairs** (counts from the setting nearest in NFE)", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best_min = [_best(table, "psnr_min", i) for i in range(n)]
    for name, row in table.items():
        cells = [name]
        for i in range(n):
            w, lp = row["psnr_min"][i], row["lpips_max"][i]
            if row["psnr"][i] is None or w is None:
                cells.append("–")
                continue
            text = _bold_if(f"{w:.2f}", w, best_min[i]) + (f" ({lp:.4f})" if lp is not None else "")
            cells.append(f"{text}; {fmt_number(row['broken'][i], 'd')} broken; "
                         f"{fmt_number(row['schedules'][i], 'd')} sched.")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

