#!/usr/bin/env bash
# Reproduce the shipped demo model from scratch: train it on CPU, export the EMA weights into the package,
# and measure its SenCache profile (plus the MagCache/TeaCache calibration the demo uses).
#   bash scripts/ship_demo_model.sh [RUN_DIR]        (about 75 minutes of training on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
W=src/sencache/demo_model/weights
PY=.venv/bin/python
nice -n -5 $PY -m sencache.demo_model.train --out "$RUN" --steps 2400 --minutes 75 --threads 1 || true
[ -d "$RUN/pipeline" ] || $PY -m sencache.demo_model.train --out "$RUN" --export-only
rm -rf "$W" && mkdir -p "$W" && cp -r "$RUN/pipeline/." "$W/"
cp "$RUN/loss.csv" "$W/training_loss.csv"
# calibration prompts: the same reserved captions the baselines are calibrated on, never evaluated on
$PY -c "from sencache.baseline_calibration import default_calibration_prompts as p; print('\n'.join(p(8)))" \
  > "$W/calibration_prompts.txt"
.venv/bin/sencache calibrate --model "$W" --prompts "$W/calibration_prompts.txt" --steps 50 --samples 8 \
  --target-nfe 25 --out "$W/sencache_profile.json"
.venv/bin/sencache plot-profile "$W/sencache_profile.json" --out docs/profile.png
