"""The benchmarks run: each main() with --quick (tiny model, few steps) writes JSON with the documented keys.

Not a timed test: the numbers of a --quick run mean nothing; only their presence and finiteness are checked
(the keys are the ones benchmarks/README.md documents). RESULTS.md is rendered from the same files.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# benchmark -> dotted paths of numbers that must be present and finite ("*": every entry of a dict or list)
DOCUMENTED = {
    "overhead": [
        "target_fraction",
        "sizes.*.forward_ms", "sizes.*.hook_us_per_call", "sizes.*.direct_overhead_fraction",
        "sizes.*.ab_overhead_fraction", "sizes.*.components_us_per_call.*",
    ],
    "speedup": [
        "steps", "reference_wall_s", "c_fwd_s", "c_reuse_s", "fixed_s", "text_encode_s",
        "runs.*.nfe", "runs.*.wall_s", "runs.*.ideal_wall_s", "runs.*.speedup", "runs.*.ideal_speedup",
        "runs.*.ratio",
    ],
    "memory": [
        "sizes.*.latent_bytes", "sizes.*.hidden_bytes", "sizes.*.variants.default.shared_bytes",
        "sizes.*.variants.default.branches.*.total_bytes", "sizes.*.variants.default.branches.*.x_latent",
        "sizes.*.variants.default.branches.*.x_hidden", "rss.variants.*.peak_rss_growth",
    ],
    "peers": [
        "reference_wall_s", "rows.*.nfe", "rows.*.wall_s", "rows.*.speedup", "rows.*.psnr",
    ],
    "demo_cost": [
        "wall_s", "transformer_share", "runs.*.wall_s", "runs.*.transformer_s", "runs.*.text_encoder_s",
        "runs.*.vae_decode_s", "runs.*.rest_s",
    ],
}
ENVELOPE = ["benchmark", "command", "quick", "machine", "table_md", "notes"]


def values_at(data, path: str) -> list:
    parts = path.split(".")
    nodes = [data]
    for part in parts:
        nxt = []
        for node in nodes:
            if part == "*":
                nxt.extend(node.values() if isinstance(node, dict) else node)
            else:
                assert part in node, f"missing key {part!r} of {path!r}"
                nxt.append(node[part])
        nodes = nxt
    return nodes


def test_every_benchmark_runs_quick_and_writes_its_documented_keys(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("SENCACHE_BENCH_RUN_ID", raising=False)
    for name, paths in DOCUMENTED.items():
        module = importlib.import_module(f"bench_{name}")
        returned = module.main(["--quick", "--out", str(tmp_path)])
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["benchmark"] == name and data["quick"] is True
        for key in ENVELOPE:
            assert key in data, f"{name}: missing {key}"
        assert data["table_md"].startswith("|")
        for path in paths:
            if name == "peers" and path.startswith("rows."):
                rows = [r for r in data["rows"] if r["available"]]
                values = [r[path.split(".")[-1]] for r in rows]
                assert len(rows) >= 3, "peers: fewer than 3 methods ran"
            else:
                values = values_at(data, path)
            assert values, f"{name}: nothing at {path}"
            for v in values:
                assert isinstance(v, (int, float)) and math.isfinite(v), f"{name}: {path} = {v!r}"
        assert returned["benchmark"] == name
    # peers: every requested method is either in the table or skipped with a reason
    peers = json.loads((tmp_path / "peers.json").read_text())
    assert ({"sencache", "magcache", "teacache", "seacache", "diffusers-seacache", "taylorseer"}
            <= {r["method"] for r in peers["rows"]})
    assert all(r["skipped"] for r in peers["rows"] if not r["available"])

    write_results = importlib.import_module("write_results")
    md_path = write_results.main(["--results", str(tmp_path), "--out", str(tmp_path / "RESULTS.md")])
    md = md_path.read_text()
    assert "SMOKE RUN" in md and "Missing" not in md
    for title in ("Decision overhead", "Speed-up against the limit", "Memory", "Peers side by side",
                  "Cost of one demo generation"):
        assert f"## {title}" in md
    cost = json.loads((tmp_path / "demo_cost.json").read_text())
    for run in cost["runs"]:  # the parts are measured inside the wall time, not guessed
        assert run["transformer_calls"] == 2 * cost["steps"]  # CFG: cond + uncond per step
        assert 0 < run["transformer_s"] < run["wall_s"] and run["rest_s"] >= 0
    sys.modules.pop("common", None)
