"""Video files: one clip as MP4 and GIF (:func:`save_clip`), and side-by-side videos, a labelled grid of small
videos written as MP4 (imageio-ffmpeg) and GIF.

The demo model's frames are 32x32, so cells are upscaled by pixel repetition (nearest neighbour, no
blurring) before they are laid out. Labels are rendered once with matplotlib's Agg canvas into plain
RGB arrays and pasted into every frame; nothing else is needed to draw text.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from sencache.errors import SenCacheError


def save_clip(frames: np.ndarray, stem, scale: int = 4, fps: int = 8) -> list:
    """Write frames (F, H, W, 3) in [0, 1] as STEM.mp4 and STEM.gif, upscaled ×scale (nearest) to be visible."""
    import imageio.v2 as imageio

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    big = as_uint8(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    mp4, gif = Path(f"{stem}.mp4"), Path(f"{stem}.gif")  # the stem may hold dots (wan2.1-...)
    imageio.mimwrite(mp4, list(big), fps=fps, macro_block_size=1, quality=9)
    write_gif(gif, big, fps=fps)
    return [mp4, gif]

BG = (255, 255, 255)
MACRO = 16  # H.264 wants sizes that are multiples of 16; we pad instead of letting ffmpeg rescale

__all__ = ["grid_video", "text_image", "upscale", "write_gif", "write_mp4"]


def as_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] (or already uint8) as uint8 0..255, rounded."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (F, H, W, 3) (or (H, W, 3)) by an integer factor."""
    if factor <= 1:
        return frames
    return np.repeat(np.repeat(frames, factor, axis=-3), factor, axis=-2)


def text_image(text: str, width: int, height: int, fontsize: float = 8.0, color: str = "black",
               background=BG, align: str = "center", weight: str = "normal") -> np.ndarray:
    """``text`` drawn into a (height, width, 3) uint8 image (several lines allowed), with matplotlib Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    fig.patch.set_facecolor(tuple(c / 255 for c in background))
    canvas = FigureCanvasAgg(fig)
    x = {"center": 0.5, "left": 4 / width, "right": 1 - 4 / width}[align]
    fig.text(x, 0.5, text, ha=align, va="center", fontsize=fontsize, color=color, weight=weight,
             family="DejaVu Sans", linespacing=1.15)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return rgba[:height, :width, :3].copy()


def _wrap(text: str, width_px: int, fontsize: float) -> str:
    chars = max(8, int(width_px / (fontsize * 0.62 * 100 / 72)))
    return "\n".join(textwrap.wrap(text, chars)) or text


def grid_video(cells: Sequence[Sequence[np.ndarray]], col_labels: Sequence[str], row_labels: Sequence[str],
               scale: int = 4, gap: int = 6, header: int = 34, band: int = 18) -> np.ndarray:
    """Lay out ``cells[row][col]`` videos (F, H, W, 3) under column labels, each row under its label band.

    All cells must have the same shape. Returns uint8 (F, H', W', 3) with H', W' multiples of 16.
    """
    if not cells or not cells[0]:
        raise SenCacheError("grid_video needs at least one cell")
    rows, cols = len(cells), len(cells[0])
    if any(len(r) != cols for r in cells) or len(col_labels) != cols or len(row_labels) != rows:
        raise SenCacheError("grid_video: every row needs one cell per column label, and one label per row")
    videos = [[upscale(as_uint8(v), scale) for v in r] for r in cells]
    F, h, w, _ = videos[0][0].shape
    if any(v.shape != (F, h, w, 3) for r in videos for v in r):
        raise SenCacheError("grid_video: all cells must have the same (frames, height, width)")
    width = cols * w + (cols + 1) * gap
    lines = [_wrap(lbl, width - 8, 7.5) for lbl in row_labels]
    bands = [band * max(1, t.count("\n") + 1) for t in lines]
    height = header + sum(bands) + rows * (h + gap) + gap
    H, W = -(-height // MACRO) * MACRO, -(-width // MACRO) * MACRO
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = BG
    for c, label in enumerate(col_labels):
        x = gap + c * (w + gap)
        canvas[0:header, x:x + w] = text_image(label, w, header, fontsize=7.5, weight="bold")
    y = header
    positions = []
    for r in range(rows):
        canvas[y:y + bands[r], 0:width] = text_image(lines[r], width, bands[r], fontsize=7.5, color="#333333",
                                                     align="left")
        y += bands[r]
        positions.append(y)
        y += h + gap
    out = np.repeat(canvas[None], F, axis=0)
    for r in range(rows):
        for c in range(cols):
            x = gap + c * (w + gap)
            out[:, positions[r]:positions[r] + h, x:x + w] = videos[r][c]
    return out


def write_mp4(path, frames: np.ndarray, fps: float = 4.0, loops: int = 3) -> Path:
    """H.264 MP4 (yuv420p, plays in browsers); the clip is repeated ``loops`` times since it is short."""
    import imageio.v2 as imageio

    path = Path(path)
    data = np.concatenate([as_uint8(frames)] * max(1, loops))
    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                            macro_block_size=MACRO, ffmpeg_log_level="error") as writer:
        for frame in data:
            writer.append_data(frame)
    return path


def write_gif(path, frames: np.ndarray, fps: float = 4.0) -> Path:
    """Looping GIF, each frame with a palette of its own colours and no dithering: a pixel becomes its nearest
    palette colour (exactly itself when the frame has at most 256 colours). On the demo's side-by-side grid
    imageio's default (median cut per frame) left 9,529 pixels more than 30 levels off (up to 75: specks, a third
    of them lighter than the frame); this keeps every pixel within 10."""
    path = Path(path)
    images = [_paletted(f) for f in as_uint8(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000.0 / fps)), loop=0,
                   optimize=False)
    return path


def _paletted(frame: np.ndarray):
    from PIL import Image

    colours = np.unique(frame.reshape(-1, 3), axis=0)
    if len(colours) > 256:  # max coverage: the palette spans the frame's colours, so no pixel lands far off
        return Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE,
                                               dither=Image.Dither.NONE)
    table = np.repeat(colours[:1], 256, axis=0)  # spare entries repeat a real colour
    table[:len(colours)] = colours
    palette = Image.new("P", (1, 1))
    palette.putpalette(table.reshape(-1).tolist())
    return Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
