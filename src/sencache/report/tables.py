"""The results of a comparison as tables: markdown (``results.md``) and plain text (the terminal), with the tail
(10th-percentile and worst pair) beside every mean."""

from __future__ import annotations

from sencache.statistics.tails import BROKEN_PSNR_DB, PSNR_CAP_DB, TAIL_FIELDS, with_tails
from sencache.toolbox.numbers import fmt_number


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
    """The reference and each available method's primary setting, as table rows."""
    return [r for r in table_rows(results, primary_only=True) if not r.get("skipped")]


def _psnr_text(row) -> str:
    if row.get("psnr") is None:
        return "–"
    return f"{row['psnr']:.2f}" + (" (identical)" if row.get("psnr_capped") else "")


HEADER = ["method", "setting", "NFE", "time (s)", "speed-up", "PSNR (dB)", "SSIM", "LPIPS", "P10 PSNR",
          "worst PSNR", "worst LPIPS", "broken", "schedules"]


def row_cells(row) -> list[str]:
    """One table row's cells as text, in HEADER's order."""
    if row.get("skipped"):
        return [row["method"], row["setting"]] + ["–"] * (len(HEADER) - 2)
    return [row["method"], row["setting"], fmt_number(row["nfe"], ".1f"), fmt_number(row["wall_s"], ".2f"),
            fmt_number(row["speedup"], ".2f") + "×" if row["speedup"] is not None else "–", _psnr_text(row),
            fmt_number(row["ssim"], ".4f"), fmt_number(row["lpips"], ".4f"), fmt_number(row.get("psnr_p10"), ".2f"),
            fmt_number(row.get("psnr_min"), ".2f"), fmt_number(row.get("lpips_max"), ".4f"),
            fmt_number(row.get("broken"), "d"), fmt_number(row.get("schedules"), "d")]


def markdown_table(results: dict) -> str:
    """results.md: every setting of every method with the tail beside the means, and what the numbers mean."""
    T = results["num_inference_steps"]
    jobs = len(results.get("jobs", []))
    lines = [f"# sencache compare: {T} steps, guidance {results['guidance_scale']:g}, {jobs} prompt x seed job(s)", "",
             "Fidelity against the uncached output of the same prompt and seed, on raw frames; means over jobs. "
             f"PSNR is capped at {results.get('psnr_cap_db', PSNR_CAP_DB):g} dB for identical videos. The tail: "
             f"10th-percentile and worst-pair PSNR, worst-pair LPIPS, broken clips (PSNR < {BROKEN_PSNR_DB:g} dB) "
             "and distinct compute/reuse schedules over the jobs.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table_rows(results):
        cells = row_cells(row)
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
    """The results as an aligned plain-text table (for the terminal)."""
    rows = [row_cells(r) for r in table_rows(results, primary_only)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
