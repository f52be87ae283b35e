"""Real videos for calibration source (b): listing a folder, reading .mp4/.gif/.npy as uint8 frames, resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sencache.errors import SenCacheError

VIDEO_EXTS = (".mp4", ".gif", ".npy", ".webm", ".mov", ".avi", ".mkv")


# --------------------------------------------------------------------------------------------
# videos (source b)
# --------------------------------------------------------------------------------------------
def list_videos(directory) -> list[Path]:
    """The video files (by extension, ``VIDEO_EXTS``) directly in ``directory``, sorted; raises if there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise SenCacheError(f"video folder {d} not found; pass --videos DIR holding .mp4, .gif or .npy files")
    paths = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    if not paths:
        raise SenCacheError(f"video folder {d} holds no videos ({', '.join(VIDEO_EXTS)})")
    return paths


def load_video(path) -> np.ndarray:
    """A video as uint8 (F, H, W, 3): mp4/gif/... via imageio, or a .npy uint8 array (F, H, W, 3)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import imageio.v2 as iio

            arr = np.stack([np.asarray(f) for f in iio.mimread(path, memtest=False)])
    except Exception as exc:  # imageio/ffmpeg/numpy raise many kinds; all mean "cannot read this file"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = lines[-1] if lines else type(exc).__name__
        raise SenCacheError(f"cannot read video {path}: {why}") from None
    if arr.ndim == 3:  # grayscale frames
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise SenCacheError(
            f"cannot read video {path}: expected uint8 frames (F, H, W, 3), got {arr.dtype} {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr[..., :3])


def resize_video(frames: np.ndarray, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (num_frames, height, width, 3) in [0, 255]: nearest in time, bilinear in space."""
    idx = np.round(np.linspace(0, frames.shape[0] - 1, num_frames)).astype(int)
    x = torch.from_numpy(frames[idx]).float().permute(0, 3, 1, 2)  # (F, 3, H, W)
    if tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=True).clamp(0, 255)
    return x.permute(0, 2, 3, 1).contiguous()
