"""The best judge score the shipped demo model could reach: the judge on rendered clips and on their VAE round trips.

    .venv/bin/python scripts/judge_ceiling.py [--prompts 32] [--prompt-seed 777] [--seeds 8] [--vae DIR] [--small-px N]

The transformer only ever produces VAE latents, so a generated clip can be no better than the decoder's rendering
of a perfect latent. This renders the judge's own captions (``sencache judge``'s default draw) from the data
generator with fresh seeds, and scores (1) the rendered clips, i.e. the judge's own accuracy, and (2) the same
clips encoded and decoded by the shipped VAE (posterior mean), i.e. the ceiling of the whole model. About 2
minutes on 2 cores (256 clips).
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    import numpy as np
    import torch

    from sencache.demo_model import load_pipeline
    from sencache.demo_model.build import round_trip
    from sencache.demo_model.data import SIZE_PX, dataset_prompts, parse_caption, render, sizes_option
    from sencache.demo_model.judge import CORE_ATTRIBUTES, breakdown_lines, judge_many

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-seed", type=int, default=777)
    ap.add_argument("--seeds", type=int, default=8, help="renderings (object placements) per caption")
    ap.add_argument("--vae", default=None, help="another VAE folder to round-trip through (default: the shipped one)")
    ap.add_argument("--system", default="wan", help="whose VAE class --vae holds: wan, cogvideox or ltx")
    ap.add_argument("--small-px", dest="sizes", type=sizes_option, default=str(SIZE_PX["small"]), metavar="N",
                    help="side of small objects (7 before stage four)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.vae:
        from sencache.demo_model.systems import system

        vae = system(args.system).load_vae(args.vae).eval()
    else:
        vae = load_pipeline().vae
    rendered, decoded = [], []
    for i, prompt in enumerate(dataset_prompts(args.prompts, seed=args.prompt_seed)):
        objects, background = parse_caption(prompt)
        for seed in range(args.seeds):
            frames = render(objects, background, np.random.default_rng([i, seed, 424242]), args.sizes)
            rendered.append((frames, prompt))
            decoded.append((round_trip(vae, frames), prompt))
    for name, pairs in (("rendered clips (the judge's own accuracy)", rendered),
                        ("VAE round trips (the model's ceiling)", decoded)):
        s = judge_many(pairs)
        print(f"{name}: {s['n_videos']} clips, {s['n_objects']} objects")
        print("  " + ", ".join(f"{a} {100 * s[a]:.1f} %" for a in (*CORE_ATTRIBUTES, "all")))
        print("\n".join(breakdown_lines(s)))


if __name__ == "__main__":
    main()
