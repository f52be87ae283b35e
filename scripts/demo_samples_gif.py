"""A GIF of the shipped demo model's samples: held-out captions, one unseen seed each, with the judge's verdict.

    .venv/bin/python scripts/demo_samples_gif.py --out docs/samples.gif [--prompts 6] [--seed 10000]

Each row is one caption; its label says which attributes the judge (sencache.demo_model.judge) found right.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    import torch

    from sencache.demo_model import load_pipeline
    from sencache.demo_model.data import dataset_prompts
    from sencache.demo_model.judge import CORE_ATTRIBUTES, judge_video
    from sencache.runtime.generation import generate
    from sencache.runtime.video import grid_video, write_gif

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/samples.gif")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-seed", type=int, default=4242)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    pipe = load_pipeline()
    cells, labels = [], []
    for prompt in dataset_prompts(args.prompts, seed=args.prompt_seed):
        frames = generate(pipe, prompt, args.seed, num_inference_steps=args.steps).frames
        verdict = judge_video(frames, prompt)
        right = [a for a in CORE_ATTRIBUTES if verdict[a]]
        cells.append([frames])
        labels.append(f"{prompt}  [judge: {', '.join(right) or 'nothing'} right]")
        print(labels[-1])
    write_gif(args.out, grid_video(cells, ["generated (seed %d)" % args.seed], labels, scale=6), fps=4)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
