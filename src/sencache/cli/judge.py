"""`sencache judge`: how well does a model follow its captions? Generate prompts × seeds, judge each clip.

Prompts default to fresh draws from the training distribution (``dataset_prompts(n, seed=...)``) and
seeds start at 10_000, far from anything training used (training draws its own noise per step).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from sencache.cli.options import add_model_arguments, load_model, set_threads, step_count
from sencache.demo_model.data import dataset_prompts
from sencache.demo_model.judge import (
    CORE_ATTRIBUTES,
    aggregate,
    breakdown_lines,
    clip_summary,
    judge_video,
)
from sencache.demo_model.word_effect import word_effect
from sencache.runtime.generation import generate


def run(args) -> int:
    """``sencache judge``."""
    set_threads(args.threads)
    pipe, _ = load_model(args)
    if args.word_effect:
        return _report_word_effect(pipe, args)
    prompts = dataset_prompts(args.prompts, seed=args.prompt_seed)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    verdicts, per_clip = [], []
    for prompt in tqdm(prompts, desc="judge", unit="prompt"):
        for seed in seeds:
            frames = generate(pipe, prompt, seed, num_inference_steps=args.steps, guidance_scale=args.guidance).frames
            verdicts.append(judge_video(frames, prompt))
            per_clip.append({"prompt": prompt, "seed": seed, **clip_summary(verdicts[-1])})
    scores = aggregate(verdicts)
    print(f"{scores['n_videos']} clips ({len(prompts)} prompts x {len(seeds)} seeds), {scores['n_objects']} objects")
    for attribute in (*CORE_ATTRIBUTES, "all"):
        print(f"  {attribute:9s} {100 * scores[attribute]:5.1f} %")
    print("\n".join(breakdown_lines(scores)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"scores": scores, "clips": per_clip, "steps": args.steps,
                                              "guidance": args.guidance}, indent=1, default=str))
        print(f"wrote {args.out}")
    return 0


def _report_word_effect(pipe, args) -> int:
    def render(caption, seed):
        return generate(pipe, caption, seed, num_inference_steps=args.steps, guidance_scale=args.guidance).frames

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    effect = word_effect(render, args.word_effect, seeds)
    print(f"mean |pixel change| in [0, 1] when one word of {args.word_effect!r} is swapped ({len(seeds)} seed(s)):")
    strongest = max(effect.values()) or 1.0
    for attribute, value in sorted(effect.items(), key=lambda kv: -kv[1]):
        print(f"  {attribute:9s} {value:.4f}  {'#' * max(1, round(40 * value / strongest))}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"caption": args.word_effect, "seeds": seeds, "steps": args.steps,
                                              "guidance": args.guidance, "mean_abs_change": effect}, indent=1))
        print(f"wrote {args.out}")
    return 0


def add_cli(sub) -> None:
    """Register ``sencache judge`` and its options on ``sub``."""
    p = sub.add_parser("judge", help="score how well the demo model follows captions (colour, shape, direction)")
    add_model_arguments(p, profile=False, sizes=False)
    p.add_argument("--prompts", type=int, default=32, help="number of prompts drawn from the data distribution")
    p.add_argument("--prompt-seed", type=int, default=777, help="seed of the prompt draw")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    p.add_argument("--first-seed", type=int, default=10_000)
    p.add_argument("--steps", type=step_count, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--word-effect", metavar="CAPTION", default=None,
                   help="instead of scoring: swap one attribute word of this one-object caption at a time (same "
                        "seeds) and report how much each kind of swap changes the pixels")
    p.add_argument("--out", default=None, help="write scores as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny demo model)")
    p.set_defaults(func=run)
