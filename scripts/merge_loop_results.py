"""Combine the runs of #37 into one results.json per pair set (same pairs, targets and protocol in every run; a
method's thresholds are tuned on the calibration prompt in each run, so they agree across runs):

* standing sets: runs/fair_<s> (every peer and the default `sencache`), runs/loop_<s> (the closed loop, holding:
  `sencache-loop`) and runs/loop_auto_<s> (hold or forecast: `sencache-loop-auto`) -> runs/merged_<s>/results.json;
* session 4: runs/newdef_<s> and runs/newdef_draw_<s> (the default that picks its rule per family and budget,
  runs/newdef_queue.sh) replace `sencache` (the ε-schedule rule alone) and the loop rows that are its rules;
* the new draw: runs/draw_<s> (the strongest peers and `sencache-loop-auto`; Wan in two halves, seeds 201 and 202),
  runs/drawloop_<s> where it ran, and runs/drawdef_<s> (the default `sencache`, and `sencache-loop` on Wan and LTX;
  runs/drawdef_queue.sh) -> runs/merged_draw_<s>/results.json.
    python scripts/merge_loop_results.py && python scripts/fair_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

from sencache.statistics.tails import with_tails

root = Path(__file__).resolve().parents[1] / "runs"
MEANS = ("nfe", "nfe_fraction", "wall_s", "speedup", "psnr", "ssim", "lpips")
TAILS = ("psnr_p10", "psnr_min", "lpips_max", "broken", "schedules", "pairs")


def load(name: str) -> dict | None:
    path = root / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def renamed(results: dict, old: str, new: str) -> dict:
    """``results`` with method ``old`` called ``new`` everywhere (settings, tuning, order, job runs)."""
    def key(k: str) -> str:
        return new + k[len(old):] if k == old or k.startswith(old + "@") else k
    out = dict(results)
    out["methods"] = {key(k): v for k, v in results["methods"].items()}
    for s in out["methods"].get(new, {}).get("settings", []):
        s["key"] = key(s["key"])
        s["setting"]["method"] = new
    out["tuning"] = {key(k): v for k, v in results.get("tuning", {}).items()}
    out["method_order"] = [key(m) for m in results["method_order"]]
    for job in out["jobs"]:
        job["runs"] = {key(k): {**v, "method": key(v.get("method", ""))} for k, v in job["runs"].items()}
    return out


def halves(a: dict, b: dict) -> dict:
    """Two runs over disjoint pairs with the same settings: means averaged by pair count, pairs joined."""
    out = dict(a)
    out["jobs"] = a["jobs"] + b["jobs"]
    out["seeds"] = sorted(set(a["seeds"]) | set(b["seeds"]))
    for m, entry in out["methods"].items():
        for sa, sb in zip(entry.get("settings", []), b["methods"][m].get("settings", [])):
            assert sa["key"] == sb["key"], (sa["key"], sb["key"])
            na, nb = len(sa["per_prompt"]), len(sb["per_prompt"])
            for k in MEANS:
                if sa.get(k) is not None and sb.get(k) is not None:
                    sa[k] = (sa[k] * na + sb[k] * nb) / (na + nb)
            sa["per_prompt"] = sa["per_prompt"] + sb["per_prompt"]
            for k in TAILS:
                sa.pop(k, None)
    return out


def insert(base: dict, extra: dict, method: str) -> dict:
    """``base`` with ``extra``'s ``method`` (same pairs) added in front."""
    base["methods"] = {method: extra["methods"][method], **base["methods"]}
    base["tuning"] = {method: extra["tuning"][method], **base.get("tuning", {})}
    base["method_order"] = [method] + [m for m in base["method_order"] if m != method]
    runs_of = {(j["prompt"], j["seed"]): j["runs"] for j in extra["jobs"]}
    for job in base["jobs"]:
        job["runs"] = {**runs_of[(job["prompt"], job["seed"])], **job["runs"]}
    return base


def drop(results: dict, method: str) -> dict:
    """``results`` without ``method`` (its settings, tuning and job runs)."""
    out = dict(results)
    out["methods"] = {k: v for k, v in results["methods"].items() if k != method}
    out["tuning"] = {k: v for k, v in results.get("tuning", {}).items() if k != method}
    out["method_order"] = [m for m in results["method_order"] if m != method]
    out["jobs"] = [{**j, "runs": {k: v for k, v in j["runs"].items() if v.get("method") != method}}
                   for j in results["jobs"]]
    return out


# session 4: the default picks its rule per family and budget (runs/newdef_queue.sh); it replaces the ε-schedule
# rule's `sencache`, and the opt-in loop row that is one of its rules (its own rows, "sencache · loop-hold", show it)
COMPONENT_ROWS = {"loop-hold": "sencache-loop", "loop-auto": "sencache-loop-auto"}


def with_new_default(merged: dict, new: dict | None) -> dict:
    if new is None:
        return merged
    merged = drop(merged, "sencache")
    rules = {s.get("rule") for s in new["methods"]["sencache"]["settings"]}
    for rule, row in COMPONENT_ROWS.items():
        if rule in rules and row in merged["methods"]:
            merged = drop(merged, row)
    return insert(merged, new, "sencache")


def write(name: str, results: dict, note: str) -> None:
    results.pop("equal_nfe", None)
    results.setdefault("notes", []).append(note)
    out = root / name
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(with_tails(results), indent=1))
    print(f"{name}: {len(results['jobs'])} pairs, methods {', '.join(results['method_order'])}")


for s in ("wan", "wan_fresh", "cogvideox", "ltx"):
    fair, auto, hold = load(f"fair_{s}"), load(f"loop_auto_{s}"), load(f"loop_{s}")
    if fair and hold:
        merged = insert(fair, renamed(hold, "sencache", "sencache-loop"), "sencache-loop")
        if auto:
            merged = insert(merged, renamed(auto, "sencache", "sencache-loop-auto"), "sencache-loop-auto")
        merged = with_new_default(merged, load(f"newdef_{s}"))
        write(f"merged_{s}", merged, "sencache-loop (holding) and sencache-loop-auto (hold or forecast): the closed "
              "loop of #37, run separately on these pairs; sencache: the default (since session 4 the rule picked per "
              "family and budget, runs/newdef_*; before, the ε-schedule rule)")
for s in ("wan", "cogvideox", "ltx"):
    draw = halves(load("draw_wan_a"), load("draw_wan_b")) if s == "wan" else load(f"draw_{s}")
    if draw:
        merged = renamed(draw, "sencache", "sencache-loop-auto")
        hold = load(f"drawloop_{s}")
        if hold:
            merged = insert(merged, renamed(hold, "sencache", "sencache-loop"), "sencache-loop")
        # session 3: the default (the ε-schedule rule) and, where it was missing, the holding loop
        default = halves(load("drawdef_wan_a"), load("drawdef_wan_b")) if s == "wan" and load("drawdef_wan_b") \
            else load(f"drawdef_{s}")
        if default:
            if "sencache-loop" in default["methods"] and "sencache-loop" not in merged["methods"]:
                merged = insert(merged, default, "sencache-loop")
            merged = insert(merged, default, "sencache")
        new = halves(load("newdef_draw_wan_a"), load("newdef_draw_wan_b")) \
            if s == "wan" and load("newdef_draw_wan_b") else load(f"newdef_draw_{s}")
        merged = with_new_default(merged, new)
        write(f"merged_draw_{s}", merged, "the new draw of #37 (docs/draw37_prompts.txt): the closed loop "
              "(sencache-loop-auto, sencache-loop) and the default (sencache, run in a later session with the same "
              "protocol) with the strongest peers")
