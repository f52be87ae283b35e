#!/usr/bin/env bash
# Run every benchmark once, then write benchmarks/RESULTS.md from their JSON files, so that every number in it
# comes from this one run on this one machine.
#
#   bash benchmarks/run_all.sh            # the real run (~10 min on 2 cores): results/*.json, RESULTS.md
#   bash benchmarks/run_all.sh --quick    # smoke run (about a minute): results/smoke/, RESULTS.md untouched
#
# Scripts run niced and single-threaded (the machine is shared). PYTHON overrides the interpreter
# (default .venv/bin/python). A script that fails is reported, the others still run, and the exit status is 1.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
RUN=(nice -n 19 env OMP_NUM_THREADS=1 "$PY")
QUICK=()
OUT=benchmarks/results
MD=benchmarks/RESULTS.md
COMMAND="bash benchmarks/run_all.sh"
if [[ "${1:-}" == "--quick" ]]; then
  QUICK=(--quick)
  OUT=benchmarks/results/smoke
  MD=$OUT/RESULTS.md
  COMMAND="bash benchmarks/run_all.sh --quick"
elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/run_all.sh [--quick]" >&2
  exit 2
fi
mkdir -p "$OUT"
export SENCACHE_BENCH_RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$$"
echo "run id $SENCACHE_BENCH_RUN_ID -> $OUT"

# cache-dit is a peer for bench_peers only, never a project dependency. Install it into the venv when missing,
# with torch/diffusers/transformers pinned to what is installed (an unpinned torch would pull a CUDA build).
if ! "$PY" -c "import cache_dit" >/dev/null 2>&1; then
  echo "installing cache-dit==1.5.3 into the venv for bench_peers (log: benchmarks/results/cache_dit_install.log)"
  pins="$(mktemp)"
  "$PY" - > "$pins" <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "diffusers", "transformers", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PYEOF
  mkdir -p benchmarks/results
  if ! "$PY" -m pip install "cache-dit==1.5.3" -c "$pins" > benchmarks/results/cache_dit_install.log 2>&1; then
    echo "cache-dit could not be installed; bench_peers reports why (tail of the log)"
  fi
  rm -f "$pins"
fi

status=0
for bench in overhead speedup memory peers demo_cost; do
  echo
  echo "=== bench_$bench ==="
  start=$SECONDS
  if ! "${RUN[@]}" "benchmarks/bench_$bench.py" "${QUICK[@]}" --out "$OUT" 2>&1 | tee "$OUT/$bench.log"; then
    echo "bench_$bench FAILED (see $OUT/$bench.log)"
    rm -f "$OUT/$bench.json"  # never let an older file stand in for this run
    status=1
  fi
  echo "bench_$bench: $((SECONDS - start)) s"
done

echo
echo "=== gpu_check ==="
# the real size on a machine with CUDA; elsewhere the same code on a tiny model (its times mean nothing)
size=tiny
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then size=real; fi
start=$SECONDS
if ! "${RUN[@]}" benchmarks/gpu_check.py --size "$size" --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"; then
  echo "gpu_check FAILED (see $OUT/gpu_check.log)"
  rm -f "$OUT/gpu_check.json"
  status=1
fi
echo "gpu_check ($size): $((SECONDS - start)) s"

echo
"${RUN[@]}" benchmarks/write_results.py --results "$OUT" --out "$MD" --command "$COMMAND" || status=1
exit $status
