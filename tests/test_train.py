"""The demo model's training script: deterministic given the seed, and resumable without changing the curve."""

import csv

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
