"""Experiment behind the README's "even the easiest data does not teach direction quickly".

Trains the shipped demo architecture on the easiest data that still asks for direction (one large object moving
fast on a plain background; colour, shape and direction random), or judges such a model on 16 fresh prompts x 2
seeds of that data:

    .venv/bin/python scripts/experiment_direction_only.py train --vae runs/vae/vae --out runs/dironly --steps 1500 --minutes 24
    .venv/bin/python scripts/experiment_direction_only.py judge runs/dironly/pipeline

Every argument after ``train`` goes to ``sencache.demo_model.train``.
"""  # noqa: E501

from __future__ import annotations

import sys

import numpy as np


def easiest_specs(rng: np.random.Generator):
    from sencache.demo_model import data

    colour = str(rng.choice(list(data.COLORS)))
    shape = data.SHAPES[rng.integers(len(data.SHAPES))]
    direction = data.DIRECTIONS[rng.integers(len(data.DIRECTIONS))]
    return [data.ObjectSpec(colour, shape, "large", direction, "fast")], "plain"


def train(argv: list[str]) -> None:
    from sencache.demo_model import data
    from sencache.demo_model import train as trainer

    data.sample_specs = easiest_specs  # the only change: what the batches are drawn from
    trainer.train(trainer.parse_args(argv))


def judge(model: str) -> None:
    import torch

    from sencache.demo_model import data, load_pipeline
    from sencache.demo_model.judge import judge_many
    from sencache.runtime.generation import generate

    torch.set_num_threads(2)
    pipe = load_pipeline(model)
    rng = np.random.default_rng(4242)
    prompts = [data.caption_for(*easiest_specs(rng)) for _ in range(16)]
    pairs = [(generate(pipe, p, seed, num_inference_steps=30).frames, p) for p in prompts for seed in (20000, 20001)]
    scores = judge_many(pairs)
    print(f"{scores['n_videos']} clips: " + ", ".join(f"{a} {100 * scores[a]:.1f} %" for a in
                                                       ("colour", "shape", "direction", "all")))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("train", "judge"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "train":
        train(sys.argv[2:])
    else:
        judge(sys.argv[2])
