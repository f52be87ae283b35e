"""Figures, tables and the static HTML page for the results of :func:`sencache.harness.compare.compare`.

``write_report(out_dir)`` reads ``results.json`` and ``frames.npz`` from a compare run and writes:

* ``side_by_side.mp4`` and ``side_by_side.gif`` — columns = the reference and each method's primary
  setting (NFE and speed-up in the label), one row per prompt x seed, frames upscaled x4;
* ``schedule.png`` — which steps each method computed (dark) or reused (light), first prompt;
* ``pareto.png`` — PSNR vs NFE and LPIPS vs NFE, one line per method over its settings;
* ``report.html`` — all of the above with the results table and the calibration/evaluation prompts.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from sencache.errors import SenCacheError
from sencache.harness.metrics import PSNR_CAP_DB
from sencache.harness.tails import BROKEN_PSNR_DB, TAIL_FIELDS, with_tails
from sencache.runtime.video import grid_video, write_gif, write_mp4
from sencache.toolbox.numbers import fmt_number

__all__ = [
    "load_frames",
    "markdown_table",
    "plot_pareto",
    "plot_schedules",
    "primary_rows",
    "save_frames",
    "table_rows",
    "text_table",
    "video_columns",
    "write_report",
]

COLORS = {
    "none": "#444444", "sencache": "#d62728", "sencache-paper": "#ff9896", "sencache-loop": "#f7b6d2",
    "sencache-loop-auto": "#e7298a",
    "diffusers-seacache-hold": "#c49c94",
    "magcache": "#1f77b4", "magcache-final": "#17becf", "magcache-fast": "#393b79",
    "teacache": "#2ca02c", "fixed": "#7f7f7f", "fixed-final": "#bcbd22", "fbcache": "#9467bd",
    "seacache": "#8c564b", "seacache-paper": "#e7969c", "diffusers-seacache": "#5254a3", "taylorseer": "#e377c2",
    "diffusers-magcache": "#aec7e8", "dbcache": "#ff7f0e",
}
MAX_VIDEO_ROWS = 6


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


def save_frames(path, frames: dict[str, np.ndarray]) -> Path:
    """Frames keyed "job|variant" as uint8 arrays in one compressed npz."""
    path = Path(path)
    np.savez_compressed(path, **{k: np.asarray(v, dtype=np.uint8) for k, v in frames.items()})
    return path


def load_frames(path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------




def table_rows(results: dict, primary_only: bool = False) -> list[dict]:
    """One row per method and setting (reference first), with the numbers the tables show."""
    ref = results["reference"]
    with_tails(results)
    rows = [{"method": "none", "setting": "uncached reference", "nfe": ref["nfe"], "wall_s": ref["wall_s"],
             "speedup": 1.0, "psnr": None, "ssim": None, "lpips": None, "primary": True, "key": "none"}]
    for name in results.get("method_order", results["methods"]):
        entry = results["methods"].get(name)
        if entry is None:
            continue
        if not entry["available"]:
            rows.append({"method": name, "setting": entry["skipped"], "skipped": True, "primary": True, "key": name})
            continue
        for s in entry["settings"]:
            if primary_only and not s["primary"]:
                continue
            label = f"{entry['param']}={s['value']:g}" if entry["param"] else "re-run of the reference"
            if s.get("rule"):  # sencache at a target NFE: the rule budget mode picked
                label = f"{s['rule']}, {label}"
            rows.append({"method": name, "setting": label, "nfe": s["nfe"], "wall_s": s["wall_s"],
                         "speedup": s["speedup"], "psnr": s["psnr"], "psnr_capped": s.get("psnr_capped"),
                         "ssim": s["ssim"], "lpips": s["lpips"], "primary": s["primary"], "key": s["key"],
                         **{k: s.get(k) for k in TAIL_FIELDS}})
    return rows


def primary_rows(results: dict) -> list[dict]:
    return [r for r in table_rows(results, primary_only=True) if not r.get("skipped")]


def _psnr_text(row) -> str:
    if row.get("psnr") is None:
        return "–"
    return f"{row['psnr']:.2f}" + (" (identical)" if row.get("psnr_capped") else "")


HEADER = ["method", "setting", "NFE", "time (s)", "speed-up", "PSNR (dB)", "SSIM", "LPIPS", "P10 PSNR",
          "worst PSNR", "worst LPIPS", "broken", "schedules"]


def _cells(row) -> list[str]:
    if row.get("skipped"):
        return [row["method"], row["setting"]] + ["–"] * (len(HEADER) - 2)
    return [row["method"], row["setting"], fmt_number(row["nfe"], ".1f"), fmt_number(row["wall_s"], ".2f"),
            fmt_number(row["speedup"], ".2f") + "×" if row["speedup"] is not None else "–", _psnr_text(row),
            fmt_number(row["ssim"], ".4f"), fmt_number(row["lpips"], ".4f"), fmt_number(row.get("psnr_p10"), ".2f"),
            fmt_number(row.get("psnr_min"), ".2f"), fmt_number(row.get("lpips_max"), ".4f"),
            fmt_number(row.get("broken"), "d"), fmt_number(row.get("schedules"), "d")]


def markdown_table(results: dict) -> str:
    T = results["num_inference_steps"]
    jobs = len(results.get("jobs", []))
    lines = [f"# sencache compare: {T} steps, guidance {results['guidance_scale']:g}, {jobs} prompt x seed job(s)", "",
             "Fidelity against the uncached output of the same prompt and seed, on raw frames; means over jobs. "
             f"PSNR is capped at {results.get('psnr_cap_db', PSNR_CAP_DB):g} dB for identical videos. The tail: "
             f"10th-percentile and worst-pair PSNR, worst-pair LPIPS, broken clips (PSNR < {BROKEN_PSNR_DB:g} dB) "
             "and distinct compute/reuse schedules over the jobs.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table_rows(results):
        cells = _cells(row)
        if row.get("primary") and not row.get("skipped") and row["method"] != "none":
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Evaluation prompts: " + "; ".join(results["evaluation"]["prompts"]),
              "Seeds: " + ", ".join(str(s) for s in results["evaluation"]["seeds"])]
    calib = results.get("calibration") or {}
    for what, info in calib.items():
        if info.get("prompts"):
            lines.append(f"Calibration prompts ({what}): " + "; ".join(info["prompts"]))
    for note in results.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def text_table(results: dict, primary_only: bool = False) -> str:
    rows = [_cells(r) for r in table_rows(results, primary_only)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Video and page
# --------------------------------------------------------------------------------------------------


def video_columns(results: dict) -> list[tuple[str, str]]:
    """(variant key, label) per column: the reference, then each method's primary setting."""
    T = results["num_inference_steps"]
    ref = results["reference"]
    cols = [("none", f"uncached\nNFE {T} · {ref['wall_s']:.2f}s" if ref.get("wall_s") else f"uncached\nNFE {T}")]
    for row in primary_rows(results)[1:]:
        if row["method"] == "none":  # the re-run of the reference adds nothing to look at
            continue
        speed = f" · {row['speedup']:.2f}×" if row.get("speedup") else ""
        cols.append((row["key"], f"{row['method']}\nNFE {row['nfe']:.4g}{speed}"))
    return cols


def write_side_by_side(results: dict, frames: dict[str, np.ndarray], out_dir, fps: float = 4.0) -> dict[str, Path]:
    out = Path(out_dir)
    cols = [(k, lbl) for k, lbl in video_columns(results)]
    jobs = [j for j in results.get("jobs", []) if all(f"{j['job']}|{k}" in frames for k, _ in cols)]
    jobs = jobs[:MAX_VIDEO_ROWS]
    if not jobs:
        return {}
    cells = [[frames[f"{j['job']}|{k}"] for k, _ in cols] for j in jobs]
    seeds = {j["seed"] for j in results["jobs"]}
    row_labels = [j["prompt"] + (f"  (seed {j['seed']})" if len(seeds) > 1 else "") for j in jobs]
    grid = grid_video(cells, [lbl for _, lbl in cols], row_labels)
    return {"side_by_side.mp4": write_mp4(out / "side_by_side.mp4", grid, fps=fps),
            "side_by_side.gif": write_gif(out / "side_by_side.gif", grid, fps=fps)}


def _html_table(results: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = []
    for row in table_rows(results):
        cls = ' class="primary"' if row.get("primary") and row["method"] != "none" and not row.get("skipped") else ""
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_equal_nfe(results: dict) -> str:
    """The stored equal-NFE rows (``results["equal_nfe"]``) as a table: mean / 10th-percentile PSNR, worst pair and
    broken clips per target; empty when the run tuned no budgets."""
    block = results.get("equal_nfe") or {}
    targets, rows = block.get("targets") or [], block.get("methods") or {}
    if not targets or not rows:
        return ""
    head = "".join(f"<th>NFE {t:g}</th>" for t in targets)
    body = []
    for name, row in rows.items():
        cells = []
        for i in range(len(targets)):
            if row["psnr"][i] is None:
                cells.append("<td>–</td>")
                continue
            tail = [fmt_number((row.get(k) or [None] * len(targets))[i], spec)
                    for k, spec in (("psnr_p10", ".2f"), ("psnr_min", ".2f"), ("broken", "d"))]
            cells.append(f"<td>{row['psnr'][i]:.2f} / {tail[0]}<br><small>worst {tail[1]}, {tail[2]} broken"
                         f"</small></td>")
        body.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return (f"<h2>At equal NFE</h2><table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table><p class='note'>Mean / 10th-percentile PSNR (dB) interpolated to each NFE along the "
            f"method's curve; worst pair's PSNR and clips below {BROKEN_PSNR_DB:g} dB from the nearest setting; "
            f"– = not reached.</p>")


def _prompt_list(prompts, seeds=None) -> str:
    items = "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
    seed_text = f"<p>Seeds: {html.escape(', '.join(str(s) for s in seeds))}</p>" if seeds else ""
    return f"<ol>{items}</ol>{seed_text}"


def _settings_list(results: dict) -> str:
    items = []
    for name in results.get("method_order", results["methods"]):
        entry = results["methods"].get(name)
        if not entry:
            continue
        if not entry["available"]:
            items.append(f"<li><b>{html.escape(name)}</b>: {html.escape(entry['skipped'])}</li>")
            continue
        for s in entry["settings"]:
            if s["primary"]:
                text = json.dumps(s["setting"], default=str)
                items.append(f"<li><b>{html.escape(name)}</b> — {html.escape(entry['description'])}<br>"
                             f"<code>{html.escape(text)}</code></li>")
    return "<ul>" + "".join(items) + "</ul>"


PAGE_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:12px 0;font-size:14px}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}tr.primary{background:#fff6d6}
img,video{max-width:100%;image-rendering:pixelated}code{font-size:12px;word-break:break-all}.note{color:#666;font-size:13px}
"""


def html_page(results: dict, files: dict[str, Path]) -> str:
    T = results["num_inference_steps"]
    names = {k: Path(v).name for k, v in files.items()}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sencache report</title>"
             f"<style>{PAGE_CSS}</style></head><body>",
             "<h1>SenCache vs. other caches</h1>",
             f"<p>{html.escape(str(results.get('model') or 'model'))} — {T} denoising steps, guidance "
             f"{results['guidance_scale']:g}. Every method runs on the same prompts and seeds as the uncached "
             f"reference; fidelity is measured against the reference on the raw frames.</p>"]
    if "side_by_side.mp4" in names:
        parts.append("<h2>Side by side</h2>"
                     f"<video src='{names['side_by_side.mp4']}' autoplay loop muted playsinline controls></video>"
                     f"<p class='note'>Also as <a href='{names['side_by_side.gif']}'>GIF</a>. Columns: uncached "
                     "reference, then each method (label: NFE, speed-up); rows: prompts.</p>")
    parts.append("<h2>Results</h2>" + _html_table(results) +
                 f"<p class='note'>NFE = block-stack runs in full-step units (of {T}); time = wall time of the "
                 "pipeline call; speed-up = uncached time / method time (same machine, same run; noisy on a shared "
                 f"CPU). PSNR is capped at {results.get('psnr_cap_db', PSNR_CAP_DB):g} dB for identical videos. "
                 "Highlighted rows are the settings shown in the video and the schedule plot.</p>")
    parts.append(_html_equal_nfe(results))
    if "schedule.png" in names:
        parts.append(f"<h2>Skip schedules</h2><img src='{names['schedule.png']}' alt='skip schedules'>")
    if "pareto.png" in names:
        parts.append(f"<h2>Fidelity vs NFE</h2><img src='{names['pareto.png']}' alt='pareto'>")
    parts.append("<h2>Settings</h2>" + _settings_list(results))
    ev = results.get("evaluation", {})
    parts.append("<h2>Prompts</h2><h3>Evaluation (held out)</h3>" +
                 _prompt_list(ev.get("prompts", []), ev.get("seeds")))
    calib = results.get("calibration") or {}
    if not calib:
        parts.append("<p class='note'>No calibration data was used.</p>")
    for what, info in calib.items():
        title = {"baselines": "Calibration of MagCache / TeaCache (baselines.json)",
                 "profile": "Calibration of the SenCache sensitivity profile"}.get(what, what)
        extra = ""
        if what == "baselines" and info.get("magcache_prompt"):
            extra = f"<p class='note'>MagCache ratio table from one run on: {html.escape(info['magcache_prompt'])}</p>"
        if info.get("prompts"):
            parts.append(f"<h3>{html.escape(title)}</h3>" + _prompt_list(info["prompts"], info.get("seeds")) + extra)
        else:
            parts.append(f"<h3>{html.escape(title)}</h3><p class='note'>prompts not recorded "
                         f"(samples: {html.escape(str(info.get('num_samples')))})</p>")
    for note in results.get("notes", []):
        parts.append(f"<p class='note'>Note: {html.escape(note)}</p>")
    env = results.get("environment", {})
    parts.append("<p class='note'>" + html.escape(", ".join(f"{k} {v}" for k, v in env.items())) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir, results: dict | None = None, frames: dict | None = None) -> dict[str, Path]:
    """Write the video, plots and report.html into ``out_dir`` (reading results.json / frames.npz if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if results is None:
        results = json.loads((out / "results.json").read_text())
    if frames is None:
        frames = load_frames(out / "frames.npz") if (out / "frames.npz").is_file() else {}
    files: dict[str, Path] = {}
    files.update(write_side_by_side(results, frames, out))
    files["schedule.png"] = plot_schedules(results, out / "schedule.png")
    files["pareto.png"] = plot_pareto(results, out / "pareto.png")
    files["report.html"] = out / "report.html"
    files["report.html"].write_text(html_page(results, files))
    return files


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


def jsonable(obj):
    """``obj`` with non-finite floats as None, numpy scalars as Python numbers and "frames" entries dropped."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if k != "frames"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return jsonable(obj.item())
    return obj
