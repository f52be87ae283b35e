"""The static report of a comparison: ``write_report(out_dir)`` reads ``results.json`` and ``frames.npz`` and writes

* ``side_by_side.mp4`` and ``side_by_side.gif`` — columns = the reference and each method's primary
  setting (NFE and speed-up in the label), one row per prompt x seed, frames upscaled x4;
* ``schedule.png`` — which steps each method computed (dark) or reused (light), first prompt;
* ``pareto.png`` — PSNR vs NFE and LPIPS vs NFE, one line per method over its settings;
* ``report.html`` — all of the above with the results table and the calibration/evaluation prompts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from sencache.report.frames import load_frames
from sencache.report.plots import plot_pareto, plot_schedules
from sencache.report.tables import HEADER, primary_rows, row_cells, table_rows
from sencache.runtime.video import grid_video, write_gif, write_mp4
from sencache.statistics.tails import BROKEN_PSNR_DB, PSNR_CAP_DB
from sencache.toolbox.numbers import fmt_number

MAX_VIDEO_ROWS = 6


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
    """side_by_side.mp4 and .gif: the reference and each primary setting as columns, one row per pair (at most
    MAX_VIDEO_ROWS)."""
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
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row_cells(row))
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
    """report.html's text: the tables, the figures in ``files`` and the calibration and evaluation prompts."""
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
