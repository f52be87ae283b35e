"""Put the closed-loop default (runs/loop_<system>, `sencache` only, same pairs, targets and protocol) into the
five-budget comparisons (runs/fair_<system>), where the rule before it becomes `sencache-schedule`:
writes runs/merged_<system>/results.json. Then: python scripts/fair_tables.py (reads merged_ where present).
    python scripts/merge_loop_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

OLD, NEW = "sencache", "sencache-schedule"
root = Path(__file__).resolve().parents[1] / "runs"


def renamed(key: str) -> str:
    return NEW + key[len(OLD):] if key == OLD or key.startswith(OLD + "@") else key


for system in ("wan", "wan_fresh", "cogvideox", "ltx"):
    fair, loop = root / f"fair_{system}" / "results.json", root / f"loop_{system}" / "results.json"
    if not (fair.exists() and loop.exists()):
        print(f"{system}: skipped (needs {fair} and {loop})")
        continue
    base, new = json.loads(fair.read_text()), json.loads(loop.read_text())
    base["methods"] = {renamed(k): v for k, v in base["methods"].items()}
    for s in base["methods"][NEW]["settings"]:
        s["key"] = renamed(s["key"])
        s["setting"]["method"] = NEW
    base["tuning"] = {renamed(k): v for k, v in base["tuning"].items()}
    base["method_order"] = [OLD] + [renamed(m) for m in base["method_order"]]
    base["methods"] = {OLD: new["methods"][OLD], **base["methods"]}
    base["tuning"] = {OLD: new["tuning"][OLD], **base["tuning"]}
    runs_of = {(j["prompt"], j["seed"]): j["runs"] for j in new["jobs"]}
    for job in base["jobs"]:
        runs = {renamed(k): {**v, "method": renamed(v.get("method", ""))} for k, v in job["runs"].items()}
        job["runs"] = {**runs_of[(job["prompt"], job["seed"])], **runs}
    base.pop("equal_nfe", None)
    base.setdefault("notes", []).append(f"{OLD}: the closed-loop rule, run separately on the same pairs "
                                        f"({loop.parent.name}); {NEW}: the rule before it")
    out = root / f"merged_{system}"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(base, indent=1))
    print(f"{system}: {len(base['jobs'])} pairs merged -> {out}")
