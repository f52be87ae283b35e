#!/usr/bin/env bash
# The five-budget comparison with every peer (both SeaCache variants; diffusers' own SeaCache on Wan as the
# cross-check) on the three demo systems: the Wan standing 16 pairs and 32 fresh pairs, CogVideoX and LTX 16 pairs
# each. Two workers on 2 cores, about 75 minutes. Then: python scripts/fair_tables.py (tables for docs/results.md).
#   bash scripts/regenerate_fair_comparison.sh
cd "$(dirname "$0")/.."
mkdir -p runs
grep -v '^#' docs/fresh_prompts.txt > runs/fresh_prompts.txt
S=.venv/bin/sencache
PEERS="sencache sencache-paper magcache magcache-fast teacache fbcache seacache seacache-paper"
run() {  # name model prompts seeds extra-methods
  local name=$1 model=$2 prompts=$3 seeds=$4 extra=$5
  mkdir "runs/claim_$name" 2>/dev/null || return 0
  echo "$(date +%T) start $name"
  $S compare --model "$model" --prompts "$prompts" --seeds $seeds --methods $PEERS $extra \
    --nfe-targets 15 20 25 30 35 --threads 1 --out "runs/fair_$name" > "runs/fair_$name.log" 2>&1
  echo "$(date +%T) done $name rc=$?"
}
worker() {
  run wan_fresh src/sencache/demo_model/weights runs/fresh_prompts.txt "101 102" diffusers-seacache
  run wan src/sencache/demo_model/weights docs/eval_prompts.txt "0 1" diffusers-seacache
  run cogvideox src/sencache/demo_model/weights_cogvideox docs/eval_prompts.txt "0 1" ""
  run ltx src/sencache/demo_model/weights_ltx docs/eval_prompts.txt "0 1" ""
}
rm -rf runs/claim_*
worker > runs/worker1.log 2>&1 &
sleep 2
worker > runs/worker2.log 2>&1 &
wait
