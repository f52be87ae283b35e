#!/usr/bin/env bash
# Reproduce the shipped demo model from scratch: train its VAE, then its transformer and text encoder on CPU,
# then eight more stages, each going on from the previous stage's EMA weights (new seed, so new batches; a new
# warm-up and cosine decay), export the EMA weights into the package, and measure its SenCache profile.
#   bash scripts/ship_demo_model.sh [RUN_DIR] [VAE_RUN_DIR] [STAGE2_DIR] [STAGE3_DIR] [STAGE4_DIR] [STAGE5_DIR] [STAGE6_DIR] [STAGE7_DIR] [STAGE8_DIR] [STAGE9_DIR]
#   (about 15 + 80 + 85 + 85 + 90 + 82 + 72 + 72 + 88 + 81 minutes of training on 2 CPU cores)
# The step counts are those of the shipped run: the first transformer stage had --steps 4000 and was stopped by
# its 80-minute limit at step 3626; the second ran 5000 steps, the third 5400; the fourth had --steps 6000 and
# was stopped by its 88-minute limit at step 5424; the fifth had --steps 5000 and was stopped by its 82-minute
# limit at step 4771; the sixth had --steps 4500 and was stopped by its 72-minute limit at step 3260; the seventh
# had --steps 3800 and was stopped by its 72-minute limit at step 3648, and trained on more crowded clips
# (--objects-mix 0.4,0.35,0.25; the judge's prompts keep 0.6,0.3,0.1); the eighth grew the model (--grow: 10
# transformer blocks instead of 8, a text encoder of 4 layers with 32 position buckets instead of 2 with 8), had
# --steps 4800 and was stopped by its 88-minute limit at step 4715; the ninth went on from the eighth (same
# architecture, so the same overrides and no --grow) with --steps 4300 and --objects-mix 0.35,0.4,0.25 (more
# two-object clips) and was stopped by its 81-minute limit at step 3536 (see the README).
# The VAE and the first three stages drew small objects 7 px wide; the later stages use today's 10 px,
# because only 43 % of 7 px shapes survive the VAE (scripts/judge_ceiling.py --small-px 7).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
VAE_RUN=${2:-runs/vae}
STAGE2=${3:-runs/stage2}
STAGE3=${4:-runs/stage3}
STAGE4=${5:-runs/stage4}
STAGE5=${6:-runs/stage5}
STAGE6=${7:-runs/stage6}
STAGE7=${8:-runs/stage7}
STAGE8=${9:-runs/stage8}
STAGE9=${10:-runs/stage9}
W=src/sencache/demo_model/weights
PY=.venv/bin/python
[ -d "$VAE_RUN/vae" ] || nice -n -5 $PY -m sencache.demo_model.train_vae --out "$VAE_RUN" --steps 1300 --lr 2e-3 --small-px 7
nice -n -5 $PY -m sencache.demo_model.train --vae "$VAE_RUN/vae" --out "$RUN" --steps 4000 --stop-at 3626 --small-px 7 || true
[ -d "$RUN/pipeline" ] || $PY -m sencache.demo_model.train --vae "$VAE_RUN/vae" --out "$RUN" --export-only --small-px 7
# a later stage: on from the previous stage's EMA weights, with a new seed (so new batches) and a new warm-up and
# cosine decay
next_stage() {
  local out=$1 previous=$2 seed=$3
  shift 3
  nice -n -5 $PY -m sencache.demo_model.train --vae "$VAE_RUN/vae" --out "$out" --init-from "$previous/pipeline" \
    --seed "$seed" --lr 2.5e-4 --warmup 100 "$@"
}
next_stage "$STAGE2" "$RUN" 1 --steps 5000 --small-px 7
next_stage "$STAGE3" "$STAGE2" 2 --steps 5400 --small-px 7
next_stage "$STAGE4" "$STAGE3" 3 --steps 6000 --stop-at 5424
next_stage "$STAGE5" "$STAGE4" 4 --steps 5000 --stop-at 4771
next_stage "$STAGE6" "$STAGE5" 5 --steps 4500 --stop-at 3260
next_stage "$STAGE7" "$STAGE6" 6 --steps 3800 --stop-at 3648 --objects-mix 0.4,0.35,0.25
# the architecture from stage eight on (stage eight grows into it, later stages must name it to load it)
GROWN=(--transformer-overrides '{"num_layers": 10}'
       --text-encoder-overrides '{"num_layers": 4, "relative_attention_num_buckets": 32}')
next_stage "$STAGE8" "$STAGE7" 7 --steps 4800 --stop-at 4715 --objects-mix 0.4,0.35,0.25 --grow "${GROWN[@]}"
next_stage "$STAGE9" "$STAGE8" 8 --steps 4300 --stop-at 3536 --objects-mix 0.35,0.4,0.25 "${GROWN[@]}"
rm -rf "$W" && mkdir -p "$W" && cp -r "$STAGE9/pipeline/." "$W/"
# one loss curve for all stages: each stage's steps continue the previous stages' count
$PY scripts/join_training_loss.py "$RUN/loss.csv" "$STAGE2/loss.csv" "$STAGE3/loss.csv" "$STAGE4/loss.csv" \
  "$STAGE5/loss.csv" "$STAGE6/loss.csv" "$STAGE7/loss.csv" "$STAGE8/loss.csv" "$STAGE9/loss.csv" > "$W/training_loss.csv"
# calibration prompts: the same reserved captions the baselines are calibrated on, never evaluated on
$PY -c "from sencache.demo_model.prompts import default_calibration_prompts as p; print('\n'.join(p(8)))" \
  > "$W/calibration_prompts.txt"
.venv/bin/sencache calibrate --model "$W" --prompts "$W/calibration_prompts.txt" --steps 50 --samples 8 \
  --target-nfe 25 --out "$W/sencache_profile.json"
.venv/bin/sencache plot-profile "$W/sencache_profile.json" --out docs/profile.png
.venv/bin/python scripts/plot_training_loss.py "$W/training_loss.csv" docs/training_loss.png
