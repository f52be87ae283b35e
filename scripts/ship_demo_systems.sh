#!/usr/bin/env bash
# Reproduce the CogVideoX and LTX-Video members of the demo family (docs/demo_model.md): each one's VAE, then its
# transformer and text encoder in two stages, both systems side by side on one CPU thread each, then the export
# into the package with the SenCache profile (the demo's baselines.json is written by the first `sencache demo`).
#   bash scripts/ship_demo_systems.sh [RUN_ROOT]
# About 25 (CogVideoX VAE) / 11 (LTX VAE) + 86 / 100 + 75 / 75 minutes of transformer training, on one core each.
# First stage: cosine over 2900 / 3300 steps, stopped (SIGTERM) at 2559 / 2917; second stage: 2400 steps from the
# first stage's weights at half the learning rate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs}
PY=.venv/bin/python
train_system() {
  local system=$1 vae_steps=$2 steps=$3 stop_at=$4
  [ -d "$ROOT/vae_$system/vae" ] || nice -n -5 $PY -m sencache.demo_model.train_vae --system "$system" \
    --out "$ROOT/vae_$system" --steps "$vae_steps" --lr 2e-3 --threads 1
  nice -n -5 $PY -m sencache.demo_model.train --system "$system" --vae "$ROOT/vae_$system/vae" \
    --out "$ROOT/${system}1" --steps "$steps" --stop-at "$stop_at" --threads 1
  nice -n -5 $PY -m sencache.demo_model.train --system "$system" --vae "$ROOT/vae_$system/vae" \
    --out "$ROOT/${system}2" --init-from "$ROOT/${system}1/pipeline" --seed 1 --lr 2.5e-4 --warmup 100 \
    --steps 2400 --threads 1
}
train_system cogvideox 1300 2900 2559 > "$ROOT/cogvideox.log" 2>&1 &
train_system ltx 2600 3300 2917 > "$ROOT/ltx.log" 2>&1 &
wait
for system in cogvideox ltx; do
  W=src/sencache/demo_model/weights_$system
  rm -rf "$W" && mkdir -p "$W" && cp -r "$ROOT/${system}2/pipeline/." "$W/"
  $PY scripts/join_training_loss.py "$ROOT/${system}1/loss.csv" "$ROOT/${system}2/loss.csv" > "$W/training_loss.csv"
  cp src/sencache/demo_model/weights/calibration_prompts.txt "$W/"
  .venv/bin/sencache calibrate --model "$W" --prompts "$W/calibration_prompts.txt" --steps 50 --samples 4 \
    --target-nfe 25 --out "$W/sencache_profile.json"
done
