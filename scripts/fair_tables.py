"""Re-render the five-budget comparisons (runs/fair_*) with the tail metrics and copy them into docs/:
results.md, equal_nfe.md, pareto.png per system, and the three-system Pareto plot.
    python scripts/fair_tables.py"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sencache.harness.compare import write_outputs
from sencache.harness.equal_nfe import equal_nfe, equal_nfe_table
from sencache.report.plots import plot_pareto_systems

RUNS = {"wan": "compare_nfe", "wan_fresh": "compare_fresh", "cogvideox": "compare_cogvideox", "ltx": "compare_ltx",
        "draw_wan": "compare_draw_wan", "draw_cogvideox": "compare_draw_cogvideox", "draw_ltx": "compare_draw_ltx"}
TARGETS = [15, 20, 25, 30, 35]

root = Path(__file__).resolve().parents[1]
systems = {}
for run, doc in RUNS.items():
    merged = root / "runs" / f"merged_{run}"  # with the closed-loop default (scripts/merge_loop_results.py)
    src = merged if (merged / "results.json").exists() else root / "runs" / f"fair_{run}"
    if not (src / "results.json").exists():
        print(f"## {run}: no results yet ({src})")
        continue
    results = json.loads((src / "results.json").read_text())
    results["equal_nfe"] = {"targets": TARGETS, "methods": equal_nfe(results, TARGETS)}
    out = root / "docs" / doc
    shutil.rmtree(out, ignore_errors=True)
    write_outputs(results, out)  # results.json (with the tails), results.md, pareto.png; frames stay in runs/
    (out / "equal_nfe.md").write_text(equal_nfe_table(results, TARGETS))
    systems[run] = results
    print(f"## {run} -> docs/{doc}\n\n{equal_nfe_table(results, TARGETS)}")
plot_pareto_systems([("Wan 2.1", systems["wan"]), ("CogVideoX", systems["cogvideox"]), ("LTX-Video", systems["ltx"])],
                    root / "docs" / "pareto_systems.png")
