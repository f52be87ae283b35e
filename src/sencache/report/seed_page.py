"""The project-page layout for several systems: per system, rows of uncached | cached | cached clips of one prompt
and seed, each with a row of amplified |method − uncached| heat maps under it and a caption saying where the
cached clips differ; the per-system table of NFE, speed-up, PSNR, SSIM and LPIPS under each.

Writes ``side_by_side.mp4``/``.gif`` (every system stacked) and ``report.html``; what a system is (a model, its
results from :func:`sencache.harness.compare.compare`, the captions) is the caller's.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sencache.errors import SenCacheError
from sencache.report.heatmap import DEFAULT_GAIN, colour_scale, heat_map
from sencache.report.page import PAGE_CSS, video_columns
from sencache.report.tables import primary_rows
from sencache.runtime.video import grid_video, text_image, write_gif, write_mp4
from sencache.toolbox.numbers import fmt_number

TITLE_BAND = 32  # a multiple of 16, so the stacked video keeps H.264-friendly sizes


@dataclass
class SystemRun:
    """One system's part of the page: its compare results and frames, and one caption per job (row)."""

    name: str
    title: str
    results: dict
    frames: dict[str, np.ndarray]
    captions: list[str] = field(default_factory=list)
    report: str | None = None  # the system's own full report, relative to the page
    display: dict[str, str] = field(default_factory=dict)  # method -> the name its column shows


def _legend(shape: tuple[int, ...]) -> np.ndarray:
    """A vertical colour ramp the size of one cell: the heat maps' scale, 0 at the bottom."""
    frames, h, w = shape[:3]
    ramp = colour_scale(np.linspace(1.0, 0.0, h)[:, None].repeat(w, 1))
    return np.repeat(ramp[None], frames, axis=0)


def _shown(label: str, display: dict[str, str]) -> str:
    """A column label "method\nNFE ..." with the method under its display name."""
    method, newline, rest = label.partition("\n")
    return display.get(method, method) + newline + rest


def system_grid(run: SystemRun, gain: float = DEFAULT_GAIN) -> np.ndarray:
    """The system's rows: clips, then heat maps, per job; a title band on top. uint8 (F, H, W, 3)."""
    cols = video_columns(run.results)
    jobs = [j for j in run.results.get("jobs", []) if all(f"{j['job']}|{k}" in run.frames for k, _ in cols)]
    if not jobs:
        raise SenCacheError(f"{run.name}: no job has frames for every column")
    cells, labels = [], []
    for i, job in enumerate(jobs):
        clips = [run.frames[f"{job['job']}|{k}"] for k, _ in cols]
        cells.append(clips)
        labels.append(f"{job['prompt']}  (seed {job['seed']})")
        cells.append([_legend(clips[0].shape)] + [heat_map(clips[0], c, gain) for c in clips[1:]])
        caption = run.captions[i] if i < len(run.captions) else ""
        labels.append(f"{caption}  ·  heat maps: |method − uncached| ×{gain:g}, scale on the left".strip(" ·"))
    grid = grid_video(cells, [_shown(lbl, run.display) for _, lbl in cols], labels)
    band = text_image(run.title, grid.shape[2], TITLE_BAND, fontsize=10, weight="bold")
    return np.concatenate([np.repeat(band[None], grid.shape[0], axis=0), grid], axis=1)


def _table(results: dict, display: dict[str, str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("method", "NFE", "speed-up", "PSNR (dB)", "SSIM", "LPIPS"))
    rows = []
    for r in primary_rows(results):
        if r["method"] == "none" and r.get("setting") != "uncached reference":
            continue
        cells = [display.get(r["method"], r["method"]) if r["method"] != "none" else "uncached",
                 fmt_number(r["nfe"], ".1f"), fmt_number(r["speedup"], ".2f") + "×", fmt_number(r["psnr"], ".2f"),
                 fmt_number(r["ssim"], ".4f"), fmt_number(r["lpips"], ".4f")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_seed_page(out_dir, runs: list[SystemRun], gain: float = DEFAULT_GAIN, fps: float = 4.0) -> dict[str, Path]:
    """``side_by_side.mp4``/``.gif`` of every system stacked, one GIF per system, and ``report.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grids = {run.name: system_grid(run, gain) for run in runs}
    width = max(g.shape[2] for g in grids.values())
    padded = [np.pad(g, ((0, 0), (0, 0), (0, width - g.shape[2]), (0, 0)), constant_values=255) for g in grids.values()]
    stacked = np.concatenate(padded, axis=1)
    files = {"side_by_side.mp4": write_mp4(out / "side_by_side.mp4", stacked, fps=fps),
             "side_by_side.gif": write_gif(out / "side_by_side.gif", stacked, fps=fps)}
    for name, grid in grids.items():
        files[f"{name}.gif"] = write_gif(out / f"{name}.gif", grid, fps=fps)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sencache demo</title>"
             f"<style>{PAGE_CSS}</style></head><body><h1>Same prompt, same seed: uncached, MagCache, SenCache</h1>",
             "<p>Each system runs every method on the same held-out prompt and noise seed, at about the same number of "
             "computed steps (NFE), each method's threshold chosen on a calibration prompt. Under each row: "
             f"|method − uncached| amplified ×{gain:g} (dark = the same as the uncached clip).</p>"]
    for run in runs:
        T = run.results["num_inference_steps"]
        parts.append(f"<h2>{html.escape(run.title)}</h2><img src='{run.name}.gif' alt='{html.escape(run.name)}'>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in run.captions) + "</ul>")
        parts.append(_table(run.results, run.display) + f"<p class='note'>{T} denoising steps, guidance "
                     f"{run.results['guidance_scale']:g}; fidelity against the uncached clip on raw frames.")
        if run.report:
            parts.append(f" Full report: <a href='{html.escape(run.report)}'>{html.escape(run.report)}</a>.")
        parts.append("</p>")
    parts.append("</body></html>")
    files["report.html"] = out / "report.html"
    files["report.html"].write_text("\n".join(parts))
    return files
