#!/usr/bin/env bash
# #37, session 3: the per-family choice on design prompts (docs/design_prompts.txt, seed 0), never reported pairs
cd "$(dirname "$0")/../.."
export PYTHONPATH=runs/frozen_s3/src  # made by: git archive ef76649 src | tar -x -C runs/frozen_s3
W=src/sencache/demo_model
for s in cogvideox ltx wan; do
  case $s in wan) m=$W/weights;; *) m=$W/weights_$s;; esac
  .venv/bin/sencache compare --model $m --prompts docs/design_prompts.txt --seeds 0 \
    --methods sencache sencache-loop sencache-loop-auto --nfe-targets 15 20 25 30 35 --threads 1 \
    --out runs/design_$s > runs/design_$s.log 2>&1 &
  [ $s = ltx ] && wait
done
wait
