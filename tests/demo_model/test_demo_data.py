"""Procedural demo data (sencache.demo_model.data) and its judge (sencache.demo_model.judge)."""

from __future__ import annotations

import collections
from dataclasses import replace

import numpy as np
import pytest

from sencache.demo_model import data as D
from sencache.demo_model.judge import ATTRIBUTES, judge_many, judge_video

N_GT = 300
N_LIES = 150


@pytest.fixture(scope="module")
def samples() -> list[D.Sample]:
    rng = np.random.default_rng(1234)
    return [D.make_sample(rng) for _ in range(N_GT)]


def test_fixed_format_constants():
    assert D.FRAMES == 9 and D.SIZE == 32
    assert {"red", "green", "blue", "yellow"} <= set(D.COLORS) and len(D.COLORS) <= 6
    assert D.SHAPES == ("circle", "square", "triangle")
    assert D.DIRECTIONS == ("left", "right", "up", "down")
    for rgb in D.COLORS.values():
        assert len(rgb) == 3 and max(rgb) - min(rgb) >= 150  # saturated
    cols = np.array(list(D.COLORS.values()), float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert d[~np.eye(len(cols), dtype=bool)].min() > 150  # far apart


def test_sample_format(samples):
    for s in samples[:50]:
        assert s.frames.dtype == np.uint8
        assert s.frames.shape == (D.FRAMES, D.SIZE, D.SIZE, 3)
        assert isinstance(s.caption, str) and s.caption == s.caption.lower()
        assert all(isinstance(o, D.ObjectSpec) for o in s.objects)
        assert s.background in ("plain", "striped")


def test_determinism():
    a = [D.make_sample(np.random.default_rng(7)) for _ in range(3)]
    b = [D.make_sample(np.random.default_rng(7)) for _ in range(3)]
    for x, y in zip(a, b):
        assert x.caption == y.caption and x.frames.tobytes() == y.frames.tobytes()

    g1, g2 = D.iterate_batches(5, seed=11), D.iterate_batches(5, seed=11)
    for _ in range(3):
        (f1, c1), (f2, c2) = next(g1), next(g2)
        assert f1.shape == (5, D.FRAMES, D.SIZE, D.SIZE, 3) and f1.dtype == np.uint8
        assert f1.tobytes() == f2.tobytes() and c1 == c2
    f3, c3 = next(D.iterate_batches(5, seed=12))
    assert f3.tobytes() != f1.tobytes() or c3 != c1

    assert D.dataset_prompts(20, seed=3) == D.dataset_prompts(20, seed=3)
    assert D.dataset_prompts(20, seed=3) != D.dataset_prompts(20, seed=4)


def test_caption_round_trip(samples):
    for s in samples:
        objects, background = D.parse_caption(s.caption)
        assert objects == s.objects and background == s.background
        assert D.caption_for(objects, background) == s.caption
    for p in D.dataset_prompts(200, seed=5):
        assert D.caption_for(*D.parse_caption(p)) == p


def test_caption_grammar_examples():
    objs, bg = D.parse_caption("a small red circle moving left slowly on a plain background")
    assert objs == [D.ObjectSpec("red", "circle", "small", "left", "slowly")] and bg == "plain"
    cap = "a large blue square standing still and a small yellow triangle moving up fast on a striped background"
    objs, bg = D.parse_caption(cap)
    assert objs == [
        D.ObjectSpec("blue", "square", "large", "still", "still"),
        D.ObjectSpec("yellow", "triangle", "small", "up", "fast"),
    ]
    assert bg == "striped" and D.caption_for(objs, bg) == cap
    # normal speed has no adverb
    assert D.caption_for([D.ObjectSpec("green", "circle", "large", "down", "normal")], "plain") == (
        "a large green circle moving down on a plain background"
    )
    for bad in (
        "",
        "a red circle moving left on a plain background",
        "a small red circle moving left slowly",
        "a small red circle moving sideways on a plain background",
        "a small red circle moving left slowly on a plain background please",
    ):
        with pytest.raises(ValueError):
            D.parse_caption(bad)


def test_vocabulary_covers_captions(samples):
    vocab = D.vocabulary()
    assert len(vocab) == len(set(vocab))
    used = set()
    for c in [s.caption for s in samples] + D.dataset_prompts(500, seed=9):
        used.update(c.split())
    assert used <= set(vocab)
    assert used == set(vocab)  # and no dead words


def test_distribution_coverage(samples):
    objs = [o for s in samples for o in s.objects]
    assert {o.shape for o in objs} == set(D.SHAPES)
    assert {o.size for o in objs} == {"small", "large"}
    assert {o.speed for o in objs} == {"still", "slowly", "normal", "fast"}
    assert {o.direction for o in objs} == set(D.DIRECTIONS) | {"still"}
    assert {o.colour for o in objs} == set(D.COLORS)
    assert {s.background for s in samples} == {"plain", "striped"}
    counts = collections.Counter(len(s.objects) for s in samples)
    assert set(counts) == {1, 2, 3}
    assert 0.45 < counts[1] / len(samples) < 0.75 and counts[3] < counts[2] < counts[1]
    still = sum(o.speed == "still" for o in objs) / len(objs)
    assert 0.07 < still < 0.25
    for s in samples:
        assert len({o.colour for o in s.objects}) == len(s.objects)  # distinct colours
        for o in s.objects:
            assert (o.speed == "still") == (o.direction == "still")


def test_objects_fully_inside_and_backgrounds_dull(samples):
    for s in samples:
        if len(s.objects) == 1:  # no occlusion: the full stencil is visible in every frame
            o = s.objects[0]
            expected = int(D._shape_mask(o.shape, D.SIZE_PX[o.size]).sum())
            hits = np.all(s.frames == np.array(D.COLORS[o.colour], np.uint8), axis=-1).sum((1, 2))
            assert (hits == expected).all(), (s.caption, hits, expected)
    bg = D._render_background("striped", np.random.default_rng(0))
    assert bg.max() <= 110 and int((bg.max(-1).astype(int) - bg.min(-1)).max()) <= 20


def test_judge_accepts_ground_truth(samples):
    res = judge_many((s.frames, s.caption) for s in samples)
    assert res["n_videos"] == N_GT and res["n_objects"] == sum(len(s.objects) for s in samples)
    for attr in ("colour", "shape", "direction", "all"):
        assert res[attr] >= 0.95, (attr, res)
    # float input in [0, 1] gives the same verdicts
    s = samples[0]
    assert judge_video(s.frames / 255.0, s.caption)["all"] == judge_video(s.frames, s.caption)["all"]


def _lie(s: D.Sample, kind: str, rng: np.random.Generator) -> tuple[str, int]:
    i = int(rng.integers(len(s.objects)))
    o = s.objects[i]
    if kind == "direction":
        if o.direction == "still":
            new = replace(o, direction=D.DIRECTIONS[rng.integers(4)], speed="normal")
        else:
            new = replace(o, direction=D.OPPOSITE[o.direction])
    elif kind == "colour":
        absent = [c for c in D.COLORS if c not in {x.colour for x in s.objects}]
        new = replace(o, colour=absent[rng.integers(len(absent))])
    else:
        others = [sh for sh in D.SHAPES if sh != o.shape]
        new = replace(o, shape=others[rng.integers(len(others))])
    objs = list(s.objects)
    objs[i] = new
    return D.caption_for(objs, s.background), i


@pytest.mark.parametrize("kind", ["direction", "colour", "shape"])
def test_judge_rejects_lies(samples, kind):
    rng = np.random.default_rng({"direction": 1, "colour": 2, "shape": 3}[kind])
    caught = caught_all = 0
    for s in samples[:N_LIES]:
        caption, i = _lie(s, kind, rng)
        r = judge_video(s.frames, caption)
        caught += not r["objects"][i][kind]
        caught_all += not r["all"]
    assert caught / N_LIES >= 0.9, (kind, caught)
    assert caught_all / N_LIES >= 0.9, (kind, caught_all)


def test_judge_splits_accuracy_by_object_size(samples):
    """Captions that lie about the shape of every small object: small objects score 0, large ones stay right."""
    pairs = []
    for s in samples[:60]:
        objs = [replace(o, shape=D.SHAPES[(D.SHAPES.index(o.shape) + 1) % 3]) if o.size == "small" else o
                for o in s.objects]
        pairs.append((s.frames, D.caption_for(objs, s.background)))
    res = judge_many(pairs)
    small, large = res["by_size"]["small"], res["by_size"]["large"]
    assert small["n"] + large["n"] == res["n_objects"] and small["n"] > 10 and large["n"] > 10
    assert small["shape"] <= 0.1 and large["shape"] >= 0.95
    assert small["colour"] >= 0.95  # only the shape lied


def test_judge_reads_known_shapes_through_the_shipped_vae(samples):
    """A generated clip is a decoded latent, so the judge must read shapes as the shipped VAE draws them (rounded
    corners, softer apexes). Large objects keep their shape through it; thresholds tuned on Gaussian blur alone
    called one decoded large square in three a circle."""
    from diffusers import AutoencoderKLWan

    from sencache.demo_model import DEFAULT_MODEL_DIR
    from sencache.demo_model.build import round_trip

    vae = AutoencoderKLWan.from_pretrained(DEFAULT_MODEL_DIR / "vae").eval()
    right, n = collections.Counter(), collections.Counter()
    for s in samples[:80]:
        for o in judge_video(round_trip(vae, s.frames), s.caption)["objects"]:
            if o["expected"].size == "large":
                n[o["expected"].shape] += 1
                right[o["expected"].shape] += o["shape"]
    for shape in D.SHAPES:
        assert n[shape] >= 15 and right[shape] / n[shape] >= 0.85, (shape, right, n)


def test_judge_splits_clip_accuracy_by_object_count(samples):
    """Captions that lie about the shape in every one-object clip: those score 0, the others stay right."""
    pairs = []
    for s in samples[:120]:
        objs = s.objects
        if len(objs) == 1:
            objs = [replace(objs[0], shape=D.SHAPES[(D.SHAPES.index(objs[0].shape) + 1) % 3])]
        pairs.append((s.frames, D.caption_for(objs, s.background)))
    by_objects = judge_many(pairs)["by_objects"]
    counts = collections.Counter(len(s.objects) for s in samples[:120])
    assert {k: v["n"] for k, v in by_objects.items()} == dict(counts) and set(counts) == {1, 2, 3}
    assert by_objects[1]["all"] == 0.0 and by_objects[2]["all"] >= 0.9 and by_objects[3]["all"] >= 0.9


def test_judge_missing_object_is_false():
    rng = np.random.default_rng(0)
    frames = D.render([], "plain", rng)  # background only
    r = judge_video(frames, "a small red circle standing still on a plain background")
    assert not any(r[a] for a in ("colour", "shape", "direction", "all"))
    assert r["objects"][0]["measured"]["found"] is False


def test_word_effect_swaps_one_word_and_measures_only_what_the_renderer_uses():
    from sencache.demo_model.word_effect import swapped_captions, word_effect

    caption = "a small red circle moving left on a plain background"
    variants = swapped_captions(caption)
    assert sorted(variants) == ["colour", "direction", "shape", "size"]
    assert len(variants["colour"]) == 3 and len(variants["direction"]) == 3 and len(variants["size"]) == 1
    assert "a small red circle moving up on a plain background" in variants["direction"]
    for captions in variants.values():  # each variant differs from the caption in exactly one word
        for v in captions:
            assert sum(a != b for a, b in zip(v.split(), caption.split())) == 1

    def colour_only(text, seed):  # a "model" that listens to the colour word and nothing else
        objects, _ = D.parse_caption(text)
        frames = np.zeros((2, 4, 4, 3))
        frames[..., 0] = list(D.COLORS).index(objects[0].colour) / 4 + seed * 0.01
        return frames

    effect = word_effect(colour_only, caption, seeds=[0, 1])
    assert effect["colour"] > 0.1
    assert effect["shape"] == effect["size"] == effect["direction"] == 0.0
    assert "direction" not in swapped_captions("a large blue square standing still on a striped background")
    with pytest.raises(ValueError, match="one-object"):
        swapped_captions("a small red circle moving left and a large blue square standing still on a plain background")


def test_judge_command_writes_scores_split_by_size(tmp_path, capsys):
    """`sencache judge` on the shipped model: one caption, one seed, a few steps; prints and stores the size split."""
    import json

    from sencache.cli import main

    out = tmp_path / "judge.json"
    assert main(["judge", "--prompts", "2", "--seeds", "1", "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 clips (2 prompts x 1 seeds)" in printed and "objects (" in printed
    written = json.loads(out.read_text())
    scores = written["scores"]
    assert sum(s["n"] for s in scores["by_size"].values()) == scores["n_objects"] > 0
    # every clip says which of its objects lost which attribute, and the clips add up to the scores
    clips = written["clips"]
    assert len(clips) == 2 and sum(c["all"] for c in clips) == scores["correct"]["all"]
    objects = [o for c in clips for o in c["objects"]]
    assert len(objects) == scores["n_objects"]
    for attribute in ATTRIBUTES:
        assert sum(attribute in o["right"] for o in objects) == scores["correct"][attribute], attribute
    for c in clips:
        assert " and ".join(o["expected"] for o in c["objects"]) in c["prompt"]


def test_sizes_set_the_drawn_stencils():
    """Single-object samples drawn with 7 px small objects (the first stages' data) carry 7 px stencils."""
    seven = D.with_small_size(7)
    assert seven["large"] == D.SIZE_PX["large"] and seven["small"] == 7 != D.SIZE_PX["small"]
    checked = 0
    for seed in range(60):
        for sizes in (seven, D.SIZE_PX):
            s = D.make_sample(np.random.default_rng(seed), sizes)
            if len(s.objects) == 1 and s.objects[0].size == "small":
                o = s.objects[0]
                hits = np.all(s.frames == np.array(D.COLORS[o.colour], np.uint8), axis=-1).sum((1, 2))
                assert (hits == D._shape_mask(o.shape, sizes["small"]).sum()).all(), (sizes, s.caption)
                checked += 1
    assert checked >= 10
    with pytest.raises(ValueError, match="small objects"):
        D.with_small_size(D.SIZE_PX["large"])
