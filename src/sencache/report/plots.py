"""The figures of a comparison: fidelity against NFE (``pareto.png``, one curve per method, or per system) and
which steps each method computed (``schedule.png``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from sencache.errors import SenCacheError

COLORS = {
    "none": "#444444", "sencache": "#d62728", "sencache-paper": "#ff9896", "sencache-loop": "#f7b6d2",
    "sencache-loop-auto": "#e7298a",
    "diffusers-seacache-hold": "#c49c94",
    "magcache": "#1f77b4", "magcache-final": "#17becf", "magcache-fast": "#393b79",
    "teacache": "#2ca02c", "fixed": "#7f7f7f", "fixed-final": "#bcbd22", "fbcache": "#9467bd",
    "seacache": "#8c564b", "seacache-paper": "#e7969c", "diffusers-seacache": "#5254a3", "taylorseer": "#e377c2",
    "diffusers-magcache": "#aec7e8", "dbcache": "#ff7f0e",
}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def pareto_curves(results: dict, metric: str) -> dict[str, tuple[tuple, tuple]]:
    """Each method's (NFE, metric) points over its settings, sorted by NFE; the reference, unavailable methods and
    capped PSNRs (runs identical to the reference) left out. A method that ran several rules (``sencache`` at
    targets that pick different ones) gets one curve per rule ("sencache · loop-hold"), never a line across two."""
    curves = {}
    for name in results.get("method_order", results["methods"]):
        entry = results["methods"].get(name)
        if not entry or not entry["available"] or name == "none":
            continue
        rules = sorted({s.get("rule") or "" for s in entry["settings"]})
        for rule in rules:
            pts = sorted((s["nfe"], s[metric]) for s in entry["settings"] if (s.get("rule") or "") == rule
                         and s.get(metric) is not None and not (metric.startswith("psnr") and s.get("psnr_capped")))
            label = name if len(rules) == 1 else f"{name} · {rule or 'schedule'}"
            if pts:
                curves[label] = tuple(zip(*pts))
    return curves


def _draw_curves(ax, results: dict, metric: str) -> None:
    curves = pareto_curves(results, metric)
    tails = pareto_curves(results, "psnr_p10") if metric == "psnr" else {}
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, "o-", color=COLORS.get(name), label=name, ms=4, lw=1.5)
        if name in tails:  # the 10th percentile: one clip in ten is at or below this line
            ax.plot(*tails[name], "--", color=COLORS.get(name), lw=0.9, alpha=0.8)
    T = results["num_inference_steps"]
    ax.axvline(T, color="#999999", ls=":", lw=1)
    # right-aligned: the line sits at the axis' right end, where a left-aligned label is cut off
    ax.text(T, ax.get_ylim()[1] if curves else 0.5, "uncached ", color="#777777", fontsize=7, va="top", ha="right")
    ax.set_xlabel("NFE (block-stack runs, full steps)")
    ax.grid(alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, f"no {metric.upper()} values", ha="center", va="center", transform=ax.transAxes)


def _shared_legend(fig, axes) -> None:
    labels = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    if labels:
        fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=min(7, len(labels)), fontsize=8,
                   frameon=False)


def plot_pareto(results: dict, path) -> Path:
    """PSNR vs NFE and LPIPS vs NFE; one line per method over its settings."""
    T = results["num_inference_steps"]
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2)
    for metric, ax, better in (("psnr", axes[0], "higher is better"), ("lpips", axes[1], "lower is better")):
        _draw_curves(ax, results, metric)
        ax.set_ylabel({"psnr": "PSNR vs uncached (dB)", "lpips": "LPIPS vs uncached"}[metric])
        ax.set_title(f"{metric.upper()} vs NFE ({better})", fontsize=10)
    _shared_legend(fig, axes)
    fig.suptitle(f"Fidelity vs cost, {T} steps, mean over {len(results.get('jobs', []))} job(s); dashed: 10th "
                 f"percentile PSNR (identical runs, PSNR = inf, not drawn)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path = Path(path)
    fig.savefig(path)
    return path


def plot_pareto_systems(systems: Sequence[tuple[str, dict]], path) -> Path:
    """PSNR vs NFE side by side, one panel per (title, compare results), one legend for all."""
    if not systems:
        raise SenCacheError("plot_pareto_systems needs at least one (title, results) pair")
    fig = _figure(4.2 * len(systems), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(systems)))
    for ax, (title, results) in zip(axes, systems):
        _draw_curves(ax, results, "psnr")
        ax.set_title(f"{title}: {len(results.get('jobs', []))} pairs, {results['num_inference_steps']} steps",
                     fontsize=10)
    axes[0].set_ylabel("PSNR vs uncached (dB; solid mean, dashed 10th percentile)")
    _shared_legend(fig, axes)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = Path(path)
    fig.savefig(path)
    return path


def plot_schedules(results: dict, path) -> Path:
    """Rows = methods (primary settings), columns = steps; dark = block stack computed, light = reused."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    T = results["num_inference_steps"]
    rows, labels = [[1] * T], [f"none  (NFE {T})"]
    for name in results.get("method_order", results["methods"]):
        entry = results["methods"].get(name)
        if not entry or not entry["available"] or name == "none":
            continue
        for s in entry["settings"]:
            if s["primary"] and s["schedule"]:
                sched = [int(bool(b)) for b in s["schedule"]][:T]
                rows.append(sched + [0] * (T - len(sched)))
                value = f" {entry['param']}={s['value']:g}" if entry["param"] else ""
                labels.append(f"{name}{value}  (NFE {sum(sched)})")
    width = min(14.0, max(6.0, 3.2 + 0.16 * T))
    fig = _figure(width, 1.2 + 0.32 * len(rows))
    ax = fig.subplots()
    ax.imshow(np.asarray(rows), aspect="auto", cmap=ListedColormap(["#e6e6e6", "#1f3b73"]), vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    step = max(1, T // 10)
    ax.set_xticks(range(0, T, step), [str(i) for i in range(0, T, step)], fontsize=7)
    ax.set_xticks(np.arange(-0.5, T, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("denoising step")
    jobs = results.get("jobs") or [{}]
    first = jobs[0]
    prompt = textwrap.shorten(f"{first.get('prompt', '?')} / seed {first.get('seed', '?')}", int(width * 14),
                              placeholder=" ...")
    fig.suptitle(f"Skip schedule (cond branch, sample 0)\n{prompt}", fontsize=8)
    fig.legend(handles=[Patch(color="#1f3b73", label="computed"), Patch(color="#e6e6e6", label="reused")],
               loc="lower right", fontsize=7, ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    fig.savefig(path)
    return path


def plain_log_ticks(axis, values) -> None:
    """Readable ticks on a log axis whose data span less than a decade (matplotlib would label minor ticks)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= 0 or hi / max(lo, 1e-300) >= 10:
        axis.set_minor_formatter(NullFormatter())
        return
    ticks = np.geomspace(lo, hi, 6)[1:-1] if hi > lo else np.array([lo])
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(lambda v, _pos: f"{v:.3g}")
