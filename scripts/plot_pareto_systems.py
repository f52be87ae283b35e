"""PSNR-vs-NFE curves of several `sencache compare` runs side by side (the README's three-architecture plot).

    python scripts/plot_pareto_systems.py "Wan 2.1=docs/compare_nfe/results.json" \
        "CogVideoX=docs/compare_cogvideox/results.json" "LTX-Video=docs/compare_ltx/results.json" \
        --out docs/pareto_systems.png
"""

from __future__ import annotations

import argparse
import json

from sencache.errors import SenCacheError
from sencache.report.plots import plot_pareto_systems


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("panels", nargs="+", metavar="TITLE=RESULTS_JSON")
    p.add_argument("--out", default="pareto_systems.png")
    args = p.parse_args(argv)
    systems = []
    for panel in args.panels:
        title, sep, path = panel.partition("=")
        if not sep:
            raise SenCacheError(f"expected TITLE=RESULTS_JSON, got {panel!r}")
        with open(path) as f:
            systems.append((title, json.load(f)))
    print(plot_pareto_systems(systems, args.out))


if __name__ == "__main__":
    main()
