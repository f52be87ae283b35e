"""Rebuild the default-rule table (sencache.core.default_rule.DEFAULT_RULES) from the design-prompt runs only.

Inputs (made by docs/design_families/run.sh, never on a reported pair): runs/design_<family>/results.json with the
three rules (`sencache` = the ε-schedule rule as it ran then, `sencache-loop`, `sencache-loop-auto`) at NFE targets
15–35, and where they exist runs/design_<family>_low and _high, the same rules tuned to targets outside 15–35 so that
every rule's curve can be read at 15 and 35. Writes docs/design_families/scores.json and prints the table.

    python scripts/choose_default_rules.py
"""

from __future__ import annotations

import json
from pathlib import Path

from sencache.core.default_rule import (
    DEFAULT_RULES,
    DESIGN_FRACTIONS,
    LOOP_AUTO,
    LOOP_HOLD,
    SCHEDULE,
    choose_rules,
    score,
)
from sencache.harness.equal_nfe import at_nfe
from sencache.statistics.tails import with_tails

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
AS_RULE = {"sencache": SCHEDULE, "sencache-loop": LOOP_HOLD, "sencache-loop-auto": LOOP_AUTO}
STEPS = 50


def settings_of(family: str) -> dict[str, list[dict]]:
    """Every setting each rule ran on the family's design prompts (the main run and the extra targets)."""
    out: dict[str, list[dict]] = {}
    for suffix in ("", "_low", "_high"):
        path = RUNS / f"design_{family}{suffix}" / "results.json"
        if not path.exists():
            continue
        results = with_tails(json.loads(path.read_text()))
        for method, entry in results["methods"].items():
            if method in AS_RULE:
                out.setdefault(AS_RULE[method], []).extend(entry.get("settings", []))
    return out


def main() -> None:
    targets = [round(f * STEPS) for f in DESIGN_FRACTIONS]
    report = {}
    for family in DEFAULT_RULES:
        rows = {}
        for rule, settings in settings_of(family).items():
            entry = {"settings": settings}
            rows[rule] = {m: [at_nfe(entry, m, float(t)) for t in targets] for m in ("psnr", "psnr_p10", "psnr_min")}
        if not rows:
            print(f"{family}: no design runs under {RUNS}")
            continue
        chosen = choose_rules(rows)
        report[family] = {"targets": targets, "rows": rows, "chosen": chosen,
                          "scores": {r: [score(m, q) for m, q in zip(row["psnr"], row["psnr_p10"])]
                                     for r, row in rows.items()}}
        print(f"{family}: {chosen}" + ("" if tuple(chosen) == DEFAULT_RULES[family] else
                                        f"  (the table in sencache.core.default_rule says {DEFAULT_RULES[family]})"))
        for rule, row in rows.items():
            cells = [("–" if m is None else f"{m:.1f} / {q:.1f}") for m, q in zip(row["psnr"], row["psnr_p10"])]
            print(f"  {rule:10s} " + " | ".join(cells))
    out = ROOT / "docs" / "design_families" / "scores.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
