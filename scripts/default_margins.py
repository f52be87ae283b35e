"""The default's margins against the best other method at each budget, on every pair set (#37's bar): mean,
10th percentile, worst clip and broken clips, from runs/merged_*/results.json (scripts/merge_loop_results.py).
    python scripts/default_margins.py"""

from __future__ import annotations

import json
from pathlib import Path

from sencache.harness.equal_nfe import equal_nfe

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [15, 20, 25, 30, 35]
SETS = {"wan": "Wan 16", "wan_fresh": "Wan 32 fresh", "draw_wan": "Wan 32 draw", "cogvideox": "CogVideoX 16",
        "draw_cogvideox": "CogVideoX 16 draw", "ltx": "LTX 16", "draw_ltx": "LTX 16 draw"}


def ours(name: str) -> bool:  # the default, its rule rows and the opt-in loops are not "another method"
    return name == "sencache" or name.startswith("sencache ·") or name.startswith("sencache-loop")


def fmt(v, spec=".1f") -> str:
    return "–" if v is None else format(v, spec)


def main() -> None:
    print("| pairs | NFE | default: mean / p10 (worst; broken) | rule | best other mean | best other p10 | "
          "Δ mean | Δ p10 |")
    print("|---|---|---|---|---|---|---|---|")
    for run, label in SETS.items():
        path = ROOT / "runs" / f"merged_{run}" / "results.json"
        if not path.exists():
            continue
        table = equal_nfe(json.loads(path.read_text()), TARGETS)
        row = table["sencache"]
        for i, t in enumerate(TARGETS):
            others = {m: r for m, r in table.items() if not ours(m)}
            best = max(((r["psnr"][i], m) for m, r in others.items() if r["psnr"][i] is not None), default=None)
            best10 = max(((r["psnr_p10"][i], m) for m, r in others.items() if r["psnr_p10"][i] is not None),
                         default=None)
            m, q, w, b = row["psnr"][i], row["psnr_p10"][i], row["psnr_min"][i], row["broken"][i]
            rule = row.get("rule", ["schedule"] * len(TARGETS))[i]
            dm = None if m is None or best is None else m - best[0]
            dq = None if q is None or best10 is None else q - best10[0]
            print(f"| {label} | {t} | {fmt(m)} / {fmt(q)} ({fmt(w)}; {fmt(b, 'd')}) | {rule} | "
                  f"{fmt(best and best[0])} {best[1] if best else ''} | {fmt(best10 and best10[0])} "
                  f"{best10[1] if best10 else ''} | {fmt(dm, '+.1f')} | {fmt(dq, '+.1f')} |")


if __name__ == "__main__":
    main()
