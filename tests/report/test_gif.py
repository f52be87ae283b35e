"""GIFs as true as the frames: a palette of each frame's own colours, no dithering (no specks of colours the
frames do not have), checked by decoding the GIF and comparing it with the frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageSequence

from sencache.runtime.video import save_clip, write_gif

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


def decode(path) -> np.ndarray:
    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(path))])


def clip(frames: int = 5, size: int = 96) -> np.ndarray:
    """Dark striped background with soft coloured disks moving, on a white canvas band: thousands of colours,
    none near white inside the video area."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(frames):
        img = np.stack([0.25 + 0.05 * np.sin(12 * x), 0.25 + 0.04 * np.cos(9 * y), 0.27 + 0.03 * x], -1)
        for (cx, cy, colour) in ((0.3 + 0.05 * k, 0.4, (0.9, 0.1, 0.1)), (0.6, 0.6 - 0.04 * k, (0.1, 0.8, 0.2)),
                                 (0.7, 0.25, (0.15, 0.3, 0.95))):
            weight = np.clip(1.6 - np.hypot(x - cx, y - cy) / 0.12, 0, 1)[..., None]
            img = img * (1 - weight) + np.array(colour) * weight
        img[:8] = 1.0  # a white label band, as the side-by-side grid has
        out.append(img)
    return np.stack(out)


def test_gif_pixels_stay_near_the_frames_and_no_specks_appear(tmp_path):
    frames = clip()
    raw = (frames * 255 + 0.5).astype(np.uint8)
    assert len(np.unique(raw[0].reshape(-1, 3), axis=0)) > 256  # the palette has to approximate
    gif = decode(write_gif(tmp_path / "c.gif", frames)).astype(int)
    err = np.abs(gif - raw.astype(int))
    assert gif.shape == raw.shape
    assert err.max() <= 16 and err.mean() < 4
    video = (slice(None), slice(8, None))  # below the white band: no near-white pixel there, before or after
    assert (raw[video].min(-1) < 200).all() and (gif[video].min(-1) < 210).all()


def test_gif_is_exact_when_a_frame_has_few_colours(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(200, 3), dtype=np.uint8)
    frames = palette[rng.integers(0, 200, size=(3, 40, 40))]  # 200 colours per frame at most
    assert (decode(write_gif(tmp_path / "c.gif", frames)) == frames).all()


def test_save_clip_writes_the_same_gif(tmp_path):
    frames = clip(frames=3, size=32)
    paths = save_clip(frames, tmp_path / "clip", scale=2)
    gif = decode(paths[1]).astype(int)
    big = (frames * 255 + 0.5).astype(np.uint8).repeat(2, 1).repeat(2, 2).astype(int)
    assert gif.shape == big.shape and np.abs(gif - big).max() <= 16


def test_save_clip_keeps_a_stem_with_dots(tmp_path):
    paths = save_clip(clip(frames=2, size=16), tmp_path / "wan2.1-t2v-1.3b-fast", scale=1)
    assert [p.name for p in paths] == ["wan2.1-t2v-1.3b-fast.mp4", "wan2.1-t2v-1.3b-fast.gif"]
