"""benchmarks/gpu_check.py --size tiny: the GPU check's code, run on the CPU in seconds (its numbers check
the code, not the speed)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_gpu_check_tiny_runs_every_check_and_writes_its_table(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCH))
    result = gpu_check.main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert result["exactness"]["eps0_equal"] and result["exactness"]["after_disable_equal"]
    assert result["exactness"]["eps0_nfe"] == result["steps"] == 10
    # every 2nd step and the last: 6 of 10; every 4th and the last: 4 of 10
    assert ([(s["interval"], s["offload"], s["nfe"]) for s in result["speedup"]]
            == [(2, False, 6), (2, True, 6), (4, False, 4)])
    assert all(s["residual_mib"] > 0 for s in result["speedup"])
    assert result["budget"]["nfe"] == result["budget"]["target_nfe"] == 5
    assert result["compile"]["graph_breaks"] == 0 and result["compile"]["nfe"] == 6
    table = (tmp_path / "gpu_check.md").read_text()
    assert "bit-identical" in table and "compiled with sencache, NFE 6" in table
    # RESULTS.md shows it, flagged as a CPU run whose times mean nothing
    sys.path.insert(0, str(BENCH))
    try:
        write_results = importlib.import_module("write_results")
    finally:
        sys.path.remove(str(BENCH))
    page = write_results.render(tmp_path, "bash benchmarks/run_all.sh")
    section = page[page.index("## GPU check"):]
    assert "No GPU on this machine" in section and "compiled with sencache, NFE 6" in section
