"""The demo model's training script: deterministic given the seed, and resumable without changing the curve."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import torch

from sencache.demo_model.train import parse_args, train


def losses(folder):
    with open(folder / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def run(folder, steps, extra=()):
    args = parse_args(["--out", str(folder), "--steps", str(steps), "--batch-size", "2", "--threads", "1",
                       "--save-every", "1", "--warmup", "2", *extra])
    return train(args)


def test_same_seed_reproduces_the_loss_curve_and_resume_continues_it(tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    resumed = tmp_path / "c"
    run(first, 3)
    run(second, 3)
    assert losses(first) == losses(second)  # bit-identical curve from the same seed
    run(resumed, 2)
    run(resumed, 3)  # picks up the checkpoint at step 2
    assert losses(resumed) == losses(first)
    assert (first / "pipeline" / "model_index.json").exists()
    other = tmp_path / "d"
    run(other, 3, extra=("--seed", "1"))
    assert losses(other) != losses(first)



def test_sigterm_stops_with_a_checkpoint_and_an_exported_pipeline(tmp_path):
    """A `kill`ed background run loses nothing: it saves its checkpoint and exports the pipeline."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sencache.demo_model.train", "--out", str(out), "--steps", "100000",
           "--batch-size", "1", "--threads", "1", "--save-every", "1000", "--warmup", "2",
           "--transformer-overrides", '{"num_layers": 1, "patch_size": [2, 4, 4]}']
    with open(tmp_path / "train.log", "w") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        log = out / "loss.csv"
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 3:  # header + two trained steps
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training stopped before it was signalled"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0, (tmp_path / "train.log").read_text()[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] >= 2  # the trained steps survived although --save-every was never reached
    config = json.loads((out / "pipeline" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 1 and config["patch_size"] == [2, 4, 4]  # --transformer-overrides reached the model
