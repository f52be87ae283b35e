"""Methods at equal cost: each method's fidelity interpolated to the same NFE along its own curve.

Every method's settings give points (mean NFE, mean PSNR / SSIM / LPIPS) over the same prompt x seed jobs.
Sorted by NFE and joined by straight lines they form the method's curve; reading every curve at the same
NFE targets compares methods at equal compute even when their bisected thresholds landed a little apart.
A target outside a method's measured NFE range is reported as unreachable, never read off another NFE.
The "area" summary is the mean interpolated PSNR over the targets a method reaches.
"""

from __future__ import annotations

import numpy as np

METRICS = ("psnr", "ssim", "lpips")


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


def equal_nfe(results: dict, targets) -> dict:
    """``{method: {"psnr": [v or None per target], "ssim": [...], "lpips": [...], "mean_psnr": m or None}}``
    for every method of a :func:`sencache.harness.compare.compare` result that ran."""
    out = {}
    for name, entry in results["methods"].items():
        if not entry.get("available", True) or entry.get("param") is None:
            continue
        row = {m: [at_nfe(entry, m, float(t)) for t in targets] for m in METRICS}
        reached = [v for v in row["psnr"] if v is not None]
        row["mean_psnr"] = float(np.mean(reached)) if len(reached) == len(targets) else None
        out[name] = row
    return out


def equal_nfe_table(results: dict, targets) -> str:
    """A markdown table: PSNR (LPIPS) per method at each target NFE, the best PSNR per column in bold,
    "–" where a method cannot reach the target, and the mean PSNR over all targets."""
    table = equal_nfe(results, targets)
    best = [max((r["psnr"][i] for r in table.values() if r["psnr"][i] is not None), default=None)
            for i in range(len(targets))]
    head = ["method"] + [f"NFE {t:g}" for t in targets] + ["mean PSNR"]
    lines = [f"PSNR dB (LPIPS) interpolated to equal NFE of {results['num_inference_steps']} steps, along each "
             f"method's own curve; – = outside the NFE range the method reached.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        cells = [name]
        for i, (p, lp) in enumerate(zip(row["psnr"], row["lpips"])):
            if p is None:
                cells.append("–")
                continue
            text = f"{p:.2f}" + (f" ({lp:.4f})" if lp is not None else "")
            cells.append(f"**{text}**" if best[i] is not None and abs(p - best[i]) < 1e-9 else text)
        cells.append(f"{row['mean_psnr']:.2f}" if row["mean_psnr"] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
