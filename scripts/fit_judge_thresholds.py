"""Fit the judge's three shape thresholds on what the demo VAE makes of clips whose shapes are known.

    .venv/bin/python scripts/fit_judge_thresholds.py [--prompts 128] [--seeds 4] [--prompt-seed 700]

A generated clip is a decoded latent, so the judge has to read shapes as the decoder draws them: with rounded
corners and softened apexes. This renders a calibration draw of captions (a prompt seed that none of the judge
draws use, and its own placements), measures every object's fill and skew (1) on the rendered clips, (2) on their
round trips through the shipped VAE and (3) on the rendered clips under a Gaussian blur (sigma 1 px; a check that
does not involve the VAE, not used for fitting), then searches a grid of thresholds for the best shape accuracy on
the round trips among those that stay exact on the rendered clips. Accuracy is averaged over each grid point's
neighbours first, so the choice sits inside a plateau, not on its edge. Prints the thresholds to put in
``sencache/demo_model/judge.py``. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse


def _blur(frames, sigma: float = 1.0):
    """Gaussian blur over height and width of a uint8 (F, H, W, 3) clip, edges replicated."""
    import numpy as np

    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = frames.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="edge")
        x = sum(w * np.take(xp, range(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(k))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _neighbour_mean(a):
    """Mean over each point's 3x3x3 neighbourhood (edges replicated)."""
    import numpy as np

    p = np.pad(a, 1, mode="edge")
    n0, n1, n2 = a.shape
    return sum(p[i:i + n0, j:j + n1, k:k + n2] for i in range(3) for j in range(3) for k in range(3)) / 27.0


def main(argv=None) -> None:
    import numpy as np
    import torch
    from tqdm import tqdm

    from sencache.demo_model import load_pipeline
    from sencache.demo_model.build import round_trip
    from sencache.demo_model.data import SIZE_PX, dataset_prompts, parse_caption, render
    from sencache.demo_model.judge import SHAPE_THRESHOLDS, ShapeThresholds, classify_shape, judge_video

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=4, help="renderings (object placements) per caption")
    ap.add_argument("--prompt-seed", type=int, default=700, help="calibration captions (the judge draws: 777-779)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    vae = load_pipeline().vae
    features = {"rendered": [], "VAE round trips": [], "blurred (sigma 1 px)": []}  # (fill, skew, shape) per object
    prompts = dataset_prompts(args.prompts, seed=args.prompt_seed)
    for i, prompt in enumerate(tqdm(prompts, desc="calibration captions")):
        objects, background = parse_caption(prompt)
        for seed in range(args.seeds):
            frames = render(objects, background, np.random.default_rng([i, seed, 515151]), SIZE_PX)
            for name, video in zip(features, (frames, round_trip(vae, frames), _blur(frames))):
                for o in judge_video(video, prompt)["objects"]:
                    if o["colour"]:  # the object was found, so it has a fill and a skew
                        features[name].append((o["measured"]["fill"], o["measured"]["skew"], o["expected"].shape))

    arrays = {name: [np.array(v) for v in zip(*rows)] for name, rows in features.items()}

    def accuracy(name: str, t: ShapeThresholds) -> float:
        fill, skew, shape = arrays[name]
        return float(np.mean(classify_shape(fill, skew, t) == shape))

    skews = np.round(np.arange(-0.45, -0.049, 0.01), 3)
    tri_fills = np.round(np.arange(0.45, 0.701, 0.005), 3)
    sq_fills = np.round(np.arange(0.78, 0.921, 0.005), 3)
    grid = [[[ShapeThresholds(s, f, q) for q in sq_fills] for f in tri_fills] for s in skews]
    on_trips = np.array([[[accuracy("VAE round trips", t) for t in row] for row in plane]
                         for plane in tqdm(grid, desc="grid")])
    exact = np.array([[[accuracy("rendered", t) for t in row] for row in plane] for plane in grid])
    score = np.where(exact >= exact.max(), _neighbour_mean(on_trips), -1.0)
    i, j, k = np.unravel_index(int(np.argmax(score)), score.shape)
    best = grid[i][j][k]
    print(f"calibration draw: --prompts {args.prompts} --prompt-seed {args.prompt_seed}, {args.seeds} placements each; "
          + ", ".join(f"{name} {len(v)} objects" for name, v in features.items()))
    print("shape accuracy per object      " + "  ".join(f"{name:>20s}" for name in features))
    # tuned on blur, until 2026-11
    hand_set = ShapeThresholds(triangle_skew=-0.25, triangle_fill=0.62, square_fill=0.86)
    for label, t in (("hand-set", hand_set), ("judge.py", SHAPE_THRESHOLDS), ("fitted", best)):
        print(f"{label:8s} {t.triangle_skew:+.2f} {t.triangle_fill:.3f} {t.square_fill:.3f}  "
              + "  ".join(f"{100 * accuracy(name, t):19.1f}%" for name in features))
    print(f"\nShapeThresholds(triangle_skew={best.triangle_skew}, triangle_fill={best.triangle_fill}, "
          f"square_fill={best.square_fill})")


if __name__ == "__main__":
    main()
