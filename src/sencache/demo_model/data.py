"""Procedural caption/video pairs for the tiny demo text-to-video model.

Every sample is ``FRAMES`` frames of ``SIZE`` x ``SIZE`` RGB (uint8) showing
1-3 flat-coloured shapes moving in straight lines over a plain or textured
dark-gray background, plus a caption produced by a small fixed grammar::

    caption    := object ( " and " object )* " on a " background " background"
    object     := "a " size " " colour " " shape " " motion
    motion     := "standing still"
                | "moving " direction                 (normal speed)
                | "moving " direction " slowly"
                | "moving " direction " fast"
    size       := "small" | "large"
    colour     := "red" | "green" | "blue" | "yellow"
    shape      := "circle" | "square" | "triangle"
    direction  := "left" | "right" | "up" | "down"
    background := "plain" | "striped"

e.g. ``"a large blue square standing still and a small yellow triangle moving
up fast on a striped background"``.  :func:`parse_caption` is the exact
inverse of :func:`caption_for`, so any prompt of the grammar can be judged by
:mod:`sencache.demo_model.judge`.

Samples deliberately differ in difficulty (object count, speed, textured vs.
plain background) so adaptive caching has something to adapt to.

Run ``python -m sencache.demo_model.data --show 6 --out /tmp/x.png`` to write
a preview grid.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Mapping, Sequence

import numpy as np

from sencache.errors import SenCacheError

FRAMES = 9
SIZE = 32

# Saturated, mutually distant palette.  Backgrounds are kept dark and gray
# (channels <= ~100, chroma <= ~16) so every palette colour stays > 150 RGB
# units away from any background pixel.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 210, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SIZES = ("small", "large")
SPEEDS = ("still", "slowly", "normal", "fast")
BACKGROUNDS = ("plain", "striped")

#: side / diameter in pixels of each size class.  Small was 7 px until the fourth training stage: through the
#: 4x VAE only 43 % of 7 px shapes stay recognisable (scripts/judge_ceiling.py), 78 % of 10 px ones.
SIZE_PX = {"small": 10, "large": 12}
#: pixels per frame of each speed class
SPEED_PX = {"still": 0.0, "slowly": 0.6, "normal": 1.2, "fast": 2.4}
#: unit (dx, dy) per direction, image coordinates (y grows downwards)
DIRECTION_VEC = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}

#: share of clips with 1, 2, 3 objects: the training distribution every judge draw and prompt list comes from
N_OBJECTS_WEIGHTS = (0.6, 0.3, 0.1)
P_STILL = 0.15
P_STRIPED = 0.5

_SPEED_ADVERB = {"slowly": "slowly", "normal": None, "fast": "fast"}
_ADVERB_SPEED = {"slowly": "slowly", "fast": "fast"}


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene: colour, shape, size class, direction and speed class (checked on creation)."""
    colour: str  # key of COLORS
    shape: str  # one of SHAPES
    size: str  # "small" | "large"
    direction: str  # one of DIRECTIONS or "still"
    speed: str  # "still" | "slowly" | "normal" | "fast"

    def __post_init__(self) -> None:
        if self.colour not in COLORS:
            raise SenCacheError(f"unknown colour {self.colour!r}")
        if self.shape not in SHAPES:
            raise SenCacheError(f"unknown shape {self.shape!r}")
        if self.size not in SIZES:
            raise SenCacheError(f"unknown size {self.size!r}")
        if self.speed not in SPEEDS:
            raise SenCacheError(f"unknown speed {self.speed!r}")
        if (self.speed == "still") != (self.direction == "still"):
            raise SenCacheError("direction and speed must both be 'still' or both not be")
        if self.direction != "still" and self.direction not in DIRECTIONS:
            raise SenCacheError(f"unknown direction {self.direction!r}")


@dataclass
class Sample:
    """One clip of the dataset: its frames, caption, objects and background."""
    frames: np.ndarray  # uint8 (FRAMES, SIZE, SIZE, 3)
    caption: str
    objects: list[ObjectSpec]
    background: str


# --------------------------------------------------------------------------
# caption grammar
# --------------------------------------------------------------------------


def object_phrase(o: ObjectSpec) -> str:
    """One object's words in a caption, e.g. "a small red circle moving left slowly"."""
    words = ["a", o.size, o.colour, o.shape]
    if o.speed == "still":
        words += ["standing", "still"]
    else:
        words += ["moving", o.direction]
        adverb = _SPEED_ADVERB[o.speed]
        if adverb:
            words.append(adverb)
    return " ".join(words)


def caption_for(objects: list[ObjectSpec], background: str) -> str:
    """Caption of a scene (see the module docstring for the grammar)."""
    if not objects:
        raise SenCacheError("a caption needs at least one object")
    if background not in BACKGROUNDS:
        raise SenCacheError(f"unknown background {background!r}")
    return " and ".join(object_phrase(o) for o in objects) + f" on a {background} background"


def parse_caption(caption: str) -> tuple[list[ObjectSpec], str]:
    """Exact inverse of :func:`caption_for`; raises ``ValueError`` on text outside the grammar."""
    toks = caption.strip().split()
    pos = 0

    def expect(*allowed: str) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise SenCacheError(f"caption ended early, expected one of {allowed}: {caption!r}")
        tok = toks[pos]
        if tok not in allowed:
            raise SenCacheError(f"unexpected word {tok!r} at {pos}, expected one of {allowed}: {caption!r}")
        pos += 1
        return tok

    objects: list[ObjectSpec] = []
    while True:
        expect("a")
        size = expect(*SIZES)
        colour = expect(*COLORS)
        shape = expect(*SHAPES)
        verb = expect("standing", "moving")
        if verb == "standing":
            expect("still")
            direction, speed = "still", "still"
        else:
            direction = expect(*DIRECTIONS)
            speed = "normal"
            if pos < len(toks) and toks[pos] in _ADVERB_SPEED:
                speed = _ADVERB_SPEED[toks[pos]]
                pos += 1
        objects.append(ObjectSpec(colour, shape, size, direction, speed))
        if expect("and", "on") == "on":
            break
    expect("a")
    background = expect(*BACKGROUNDS)
    expect("background")
    if pos != len(toks):
        raise SenCacheError(f"trailing words {toks[pos:]}: {caption!r}")
    return objects, background


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce (sorted, no duplicates)."""
    words = {"a", "and", "on", "background", "standing", "still", "moving"}
    words.update(SIZES, COLORS, SHAPES, DIRECTIONS, BACKGROUNDS, _ADVERB_SPEED)
    return sorted(words)


# --------------------------------------------------------------------------
# sampling and rendering
# --------------------------------------------------------------------------


def sample_specs(rng: np.random.Generator,
                 objects_mix: Sequence[float] = N_OBJECTS_WEIGHTS) -> tuple[list[ObjectSpec], str]:
    """Draw the scene description: ``(objects, background)``; ``objects_mix`` weighs 1, 2 and 3 objects."""
    n = int(rng.choice(len(objects_mix), p=objects_mix)) + 1
    colours = rng.choice(list(COLORS), size=n, replace=False)
    objects = []
    for colour in colours:
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        if rng.random() < P_STILL:
            direction = speed = "still"
        else:
            direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
            speed = ("slowly", "normal", "fast")[rng.integers(3)]
        objects.append(ObjectSpec(str(colour), shape, size, direction, speed))
    background = "striped" if rng.random() < P_STRIPED else "plain"
    return objects, background


def with_small_size(small_px: int) -> dict[str, int]:
    """``SIZE_PX`` with another side for small objects (the first three training stages used 7 px)."""
    if not 3 <= small_px < SIZE_PX["large"]:
        raise SenCacheError(f"small objects must be 3 to {SIZE_PX['large'] - 1} px (large ones are "
                         f"{SIZE_PX['large']} px); got {small_px}")
    return {**SIZE_PX, "small": small_px}


def sizes_option(text: str) -> dict[str, int]:
    """``--small-px N`` of the training commands, parsed straight into the size table :func:`with_small_size` gives."""
    try:
        return with_small_size(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def objects_mix_option(text: str) -> tuple[float, float, float]:
    """``--objects-mix A,B,C`` of the training command: how often a training clip has 1, 2, 3 objects.

    Only the training batches see it; evaluation prompts keep :data:`N_OBJECTS_WEIGHTS`. Weights are normalised."""
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 0.4,0.35,0.25; got {text!r}") from None
    if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative weights for 1, 2, 3 objects, not all zero; "
                                         f"got {text!r}")
    total = sum(weights)
    return tuple(w / total for w in weights)


@lru_cache(maxsize=None)
def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean (side, side) stencil touching all four edges of its box (cached: treat as read-only)."""
    c = (side - 1) / 2.0
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        r = side / 2.0
        return (xx - c) ** 2 + (yy - c) ** 2 <= r * r
    if shape == "triangle":
        # isosceles, apex up, base = height = side: row y is ~y + 1 px wide,
        # so the fill ratio of the bounding box is ~0.5-0.55
        half = np.maximum((yy + 1) / 2.0 - 0.5, c - np.floor(c))  # apex: 1 px (odd) / 2 px (even)
        return np.abs(xx - c) <= half + 1e-9
    raise SenCacheError(f"unknown shape {shape!r}")


def _render_background(background: str, rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(35, 65)
    tint = rng.uniform(-6, 6, size=3)
    base = np.clip(level + tint, 0, 255)
    if background == "plain":
        img = np.broadcast_to(base, (SIZE, SIZE, 3))
    elif background == "striped":
        contrast = rng.uniform(18, 32)
        width = int(rng.integers(2, 5))
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        kind = int(rng.integers(4))
        if kind == 0:  # horizontal stripes
            pat = (yy // width) % 2
        elif kind == 1:  # vertical stripes
            pat = (xx // width) % 2
        elif kind == 2:  # diagonal stripes
            pat = ((xx + yy) // width) % 2
        else:  # checker
            pat = (xx // width + yy // width) % 2
        img = base[None, None, :] + contrast * pat[..., None]
    else:
        raise SenCacheError(f"unknown background {background!r}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _trajectory(o: ObjectSpec, rng: np.random.Generator, spread: float, sizes: Mapping[str, int]) -> np.ndarray:
    """Integer top-left (x, y) per frame, shape (FRAMES, 2); always fully inside the frame."""
    side = sizes[o.size]
    hi = SIZE - side  # largest valid top-left coordinate
    dx, dy = DIRECTION_VEC[o.direction]
    travel = SPEED_PX[o.speed] * (FRAMES - 1)
    # along the motion axis: start in the part of the feasible range nearest
    # the edge opposite to the motion; other axis: uniform jitter
    room = hi - travel
    along = rng.uniform(0.0, spread) * room
    other = rng.uniform(0.0, hi)
    t = np.arange(FRAMES)
    step = SPEED_PX[o.speed] * t
    if dx:
        x = along + step if dx > 0 else hi - along - step
        y = np.full(FRAMES, other)
    elif dy:
        y = along + step if dy > 0 else hi - along - step
        x = np.full(FRAMES, other)
    else:
        x = np.full(FRAMES, rng.uniform(0.0, hi))
        y = np.full(FRAMES, other)
    xy = np.stack([x, y], axis=1)
    return np.clip(np.rint(xy), 0, hi).astype(np.int64)


def _overlap_area(a: np.ndarray, sa: int, b: np.ndarray, sb: int, margin: int = 1) -> int:
    """Summed (over frames) intersection area of two box trajectories grown by ``margin`` px."""
    ix = np.minimum(a[:, 0] + sa, b[:, 0] + sb) - np.maximum(a[:, 0], b[:, 0]) + margin
    iy = np.minimum(a[:, 1] + sa, b[:, 1] + sb) - np.maximum(a[:, 1], b[:, 1]) + margin
    return int(np.sum(np.clip(ix, 0, None) * np.clip(iy, 0, None)))


_PLACEMENT_TRIES = 40


def _place(spec_list: list[ObjectSpec], rng: np.random.Generator, sizes: Mapping[str, int]) -> list[np.ndarray]:
    """Trajectories for all objects, re-drawn up to ``_PLACEMENT_TRIES`` times to keep
    objects apart (1 px gap); if no separated layout is found the least-overlapping
    one is kept (objects may then overlap; later ones are drawn on top)."""
    best: list[np.ndarray] = []
    best_cost = None
    tries = _PLACEMENT_TRIES if len(spec_list) > 1 else 1
    for attempt in range(tries):
        # later attempts may start anywhere along the motion axis, not just near the far edge
        spread = 0.6 if attempt < tries // 2 else 1.0
        trajs: list[np.ndarray] = []
        cost = 0
        for o in spec_list:
            side = sizes[o.size]
            for _ in range(5):  # a few cheap per-object re-draws first
                traj = _trajectory(o, rng, spread, sizes)
                c = sum(
                    100 * _overlap_area(traj, side, t2, sizes[o2.size], margin=0)
                    + _overlap_area(traj, side, t2, sizes[o2.size], margin=1)
                    for t2, o2 in zip(trajs, spec_list)
                )
                if c == 0:
                    break
            trajs.append(traj)
            cost += c
        if best_cost is None or cost < best_cost:
            best, best_cost = trajs, cost
        if cost == 0:
            break
    return best


def render(spec_list: list[ObjectSpec], background: str, rng: np.random.Generator,
           sizes: Mapping[str, int] = SIZE_PX) -> np.ndarray:
    """Render a scene to uint8 frames (FRAMES, SIZE, SIZE, 3); positions are drawn from ``rng``;
    ``sizes`` gives each size class's side in pixels."""
    frames = np.repeat(_render_background(background, rng)[None], FRAMES, axis=0)
    for o, traj in zip(spec_list, _place(spec_list, rng, sizes)):
        side = sizes[o.size]
        mask = _shape_mask(o.shape, side)
        colour = np.array(COLORS[o.colour], np.uint8)
        for f, (x, y) in enumerate(traj):
            frames[f, y : y + side, x : x + side][mask] = colour
    return frames


def make_sample(rng: np.random.Generator, sizes: Mapping[str, int] = SIZE_PX,
                objects_mix: Sequence[float] = N_OBJECTS_WEIGHTS) -> Sample:
    """One random clip from ``rng``: a scene drawn, rendered and captioned (``sizes``: pixels per size class)."""
    objects, background = sample_specs(rng, objects_mix)
    frames = render(objects, background, rng, sizes)
    return Sample(frames=frames, caption=caption_for(objects, background), objects=objects, background=background)


def dataset_prompts(n: int, seed: int) -> list[str]:
    """``n`` captions drawn from the training distribution (for evaluation prompt lists)."""
    rng = np.random.default_rng(seed)
    return [caption_for(*sample_specs(rng)) for _ in range(n)]


def iterate_batches(batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield ``(frames uint8 (B, FRAMES, SIZE, SIZE, 3), captions)`` forever; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    while True:
        samples = [make_sample(rng) for _ in range(batch_size)]
        yield np.stack([s.frames for s in samples]), [s.caption for s in samples]


# --------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------


def save_grid(samples: list[Sample], out: str, scale: float = 1.0) -> None:
    """Write a PNG: one row per sample (frames left to right), caption above each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(samples)
    fig, axes = plt.subplots(n, FRAMES, figsize=(FRAMES * 1.1 * scale, n * 1.45 * scale), squeeze=False)
    for r, s in enumerate(samples):
        for f in range(FRAMES):
            ax = axes[r, f]
            ax.imshow(s.frames[f], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].text(
            0.0, 1.04, "\n".join(textwrap.wrap(s.caption, 100)), transform=axes[r, 0].transAxes,
            fontsize=7, ha="left", va="bottom", clip_on=False,
        )
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.35 / n, bottom=0.02, hspace=0.5, wspace=0.06)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Preview the dataset: write a PNG grid of ``--show`` samples and print their captions."""
    ap = argparse.ArgumentParser(description="Preview the procedural demo dataset.")
    ap.add_argument("--show", type=int, default=6, help="number of samples")
    ap.add_argument("--out", default="demo_samples.png", help="output PNG path")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    samples = [make_sample(rng) for _ in range(args.show)]
    save_grid(samples, args.out)
    for s in samples:
        print(s.caption)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
