"""One generation through an unchanged diffusers pipeline, returned as frames in [0, 1].

Frames come from ``output_type="np"``; the only model-specific knowledge is the demo model's trained size
and text length (WanPipeline's defaults are Wan 2.1's 81x480x832). Everything else is passed through unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


def default_call_kwargs(pipe) -> dict:
    """Size and text-length defaults the model was trained for (only the demo model needs them)."""
    from .demo_model.build import demo_call_kwargs, is_demo_pipeline

    return demo_call_kwargs() if is_demo_pipeline(pipe) else {}


@dataclass
class Generated:
    frames: np.ndarray  # (F, H, W, 3) float32 in [0, 1]
    seconds: float


def generate(pipe, prompt: str, seed: int, num_inference_steps: int = 50, guidance_scale: float = 5.0,
             negative_prompt: str | None = None, device: str | None = None, **call_kwargs) -> Generated:
    kwargs = {**default_call_kwargs(pipe), **call_kwargs}
    generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    start = time.perf_counter()
    out = pipe(
        prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, generator=generator, output_type="np", **kwargs,
    )
    seconds = time.perf_counter() - start
    frames = np.asarray(out.frames[0], dtype=np.float32)
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    return Generated(frames=np.clip(frames, 0.0, 1.0).astype(np.float32), seconds=seconds)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_clip(frames: np.ndarray, stem, scale: int = 4, fps: int = 8) -> list:
    """Write frames (F, H, W, 3) in [0, 1] as STEM.mp4 and STEM.gif, upscaled ×scale (nearest) to be visible."""
    from pathlib import Path

    import imageio.v2 as imageio

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    big = to_uint8(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    mp4, gif = stem.with_suffix(".mp4"), stem.with_suffix(".gif")
    imageio.mimwrite(mp4, list(big), fps=fps, macro_block_size=1, quality=9)
    imageio.mimwrite(gif, list(big), duration=1000 / fps, loop=0)
    return [mp4, gif]
