#!/usr/bin/env bash
# Re-measure the documented numbers of the CogVideoX and LTX-Video demo members, after
# scripts/ship_demo_systems.sh replaced them: the fresh judge draw, the five-budget comparison, the three-system
# Pareto plot and the demo (README's seed page). Both systems side by side on one core each; about 35 minutes on
# 2 cores. A human then pastes the numbers into docs/results.md, docs/demo_model.md and the README.
#   bash scripts/regenerate_systems_docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sencache
measure_system() {
  local system=$1 W=src/sencache/demo_model/weights_$1
  rm -f "$W/baselines.json"  # MagCache/TeaCache ratios and the demo's thresholds belong to the old weights
  $S judge --model "$W" --prompts 96 --prompt-seed 790 --first-seed 90000 --seeds 1 --threads 1 \
    --out "docs/judge_790_$system.json"
  $S compare --model "$W" --prompts docs/eval_prompts.txt --seeds 0 1 --methods sencache sencache-paper magcache \
    magcache-fast teacache fbcache seacache seacache-paper --nfe-targets 15 20 25 30 35 --threads 1 \
    --out "docs/compare_$system"
  rm -f "docs/compare_$system/frames.npz"  # 2.3 MB of clips the tables do not need
}
mkdir -p runs
measure_system cogvideox > runs/regenerate_cogvideox.log 2>&1 &
measure_system ltx > runs/regenerate_ltx.log 2>&1 &
wait
.venv/bin/python scripts/plot_pareto_systems.py "Wan 2.1=docs/compare_nfe/results.json" \
  "CogVideoX=docs/compare_cogvideox/results.json" "LTX-Video=docs/compare_ltx/results.json" --out docs/pareto_systems.png
$S demo --out runs/demo_systems
cp runs/demo_systems/side_by_side.gif docs/seed_page.gif
