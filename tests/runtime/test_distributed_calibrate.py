"""Calibration sharded under torchrun (2 ranks, gloo on CPU) equals the single-process run."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

from sencache.cli import main
from sencache.core.profile import SensitivityProfile
from sencache.demo_model.build import build_pipeline
from sencache.runtime import distributed as dist

WORDS = ["a", "red", "ball", "blue", "box", "moves", "left"]


def test_helpers_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    assert dist.init_if_needed() is False
    assert dist.shard("abc") == [(0, "a"), (1, "b"), (2, "c")]
    assert dist.gather_objects({"x": 1}) == [{"x": 1}]
    assert dist.broadcast_object(7) == 7
    dist.barrier()
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert dist.is_distributed() and dist.rank() == 1 and not dist.is_main()
    assert dist.shard(range(7)) == [(1, 1), (4, 4)]  # round-robin with global indices


def _max_rel_diff(a, b) -> float:
    return max((abs(x - y) / max(abs(x), abs(y), 1e-30) for x, y in zip(a, b)), default=0.0)


def test_torchrun_two_ranks_equals_single_process(tmp_path):
    torch.manual_seed(0)
    pipe = build_pipeline(WORDS, seed=0, num_layers=1)
    model = tmp_path / "pipe"
    pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball moves left\na blue box\n")
    args = ["calibrate", "--model", str(model), "--prompts", str(prompts), "--steps", "4", "--samples", "3",
            "--seed", "3", "--frames", "5", "--height", "16", "--width", "16"]

    single = tmp_path / "single.json"
    assert main([*args, "--out", str(single), "--no-progress"]) == 0

    sharded = tmp_path / "sharded.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "sencache.cli", *args, "--out", str(sharded)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone writes
    assert proc.stderr.count("sencache calibrate: 3 samples") == 1  # cost estimate and bar on rank 0 only
    assert not list(tmp_path.glob("*.tmp"))

    a, b = SensitivityProfile.load(single), SensitivityProfile.load(sharded)
    assert b.metadata["world_size"] == 2 and a.metadata["world_size"] == 1
    assert a.timesteps == b.timesteps and len(a.timesteps) == 4
    assert a.metadata["seeds"] == b.metadata["seeds"] == [3, 4, 5]
    assert a.metadata["prompts"] == b.metadata["prompts"]
    for name in ("jx", "jt"):
        assert _max_rel_diff(getattr(a, name), getattr(b, name)) < 1e-5
    assert set(a.spread) == set(b.spread) and set(a.curves) == set(b.curves)
    for key in a.spread:
        assert _max_rel_diff(a.spread[key], b.spread[key]) < 1e-5, key
    for key in a.curves:
        assert _max_rel_diff(a.curves[key], b.curves[key]) < 1e-5, key
    for values in (b.jx, b.jt, *b.spread.values(), *b.curves.values()):
        assert len(values) == 4 and all(math.isfinite(v) and v >= 0 for v in values)
    assert b.spread["count"] == [3.0] * 4
