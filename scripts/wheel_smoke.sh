#!/usr/bin/env bash
# What a user installs is what we test: build the wheel and the sdist, check both carry every shipped demo
# system, install the wheel into a fresh venv outside the work tree, run `sencache demo --quick` on all three
# systems from it, and check that nothing inside the installed package changed. Needs ./.venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sencache_wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PY="$REPO/.venv/bin/python"

echo "== building the wheel and the sdist into $WORK/dist"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation . -w "$WORK/dist"
"$PY" -c "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])" "$WORK/dist" >/dev/null
"$PY" scripts/check_distributions.py "$WORK"/dist/*.whl "$WORK"/dist/*.tar.gz

echo "== installing the wheel into a fresh venv"
"${PYTHON:-python3}" -m venv "$WORK/venv"
VPIP="$WORK/venv/bin/python -m pip"
$VPIP install --quiet --disable-pip-version-check "torch==2.13.0"  # the CPU wheel first, never the CUDA build
$VPIP install --quiet --disable-pip-version-check "$WORK"/dist/*.whl

echo "== sencache demo --quick from the installed wheel (outside the work tree)"
cd "$WORK"
PACKAGE="$("$WORK/venv/bin/python" -c 'import pathlib, sencache; print(pathlib.Path(sencache.__file__).parent)')"
case "$PACKAGE" in "$REPO"*) echo "the installed sencache resolves into the work tree ($PACKAGE)"; exit 1;; esac
"$WORK/venv/bin/python" "$REPO/scripts/check_distributions.py" --digest "$PACKAGE" > "$WORK/before.txt"
"$WORK/venv/bin/sencache" demo --quick --out "$WORK/demo"
"$WORK/venv/bin/python" "$REPO/scripts/check_distributions.py" --digest "$PACKAGE" > "$WORK/after.txt"
if ! diff -q "$WORK/before.txt" "$WORK/after.txt" >/dev/null; then
  echo "sencache demo changed files inside the installed package:"; diff "$WORK/before.txt" "$WORK/after.txt" || true
  exit 1
fi
for system in wan cogvideox ltx; do
  test -s "$WORK/demo/$system/results.json" || { echo "no results for $system"; exit 1; }
done
test -s "$WORK/demo/side_by_side.mp4" && test -s "$WORK/demo/report.html"
echo "wheel smoke passed: all three demo systems generated from the installed wheel; the package is unchanged"
