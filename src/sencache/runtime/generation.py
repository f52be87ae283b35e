"""One generation through an unchanged diffusers pipeline, returned as frames in [0, 1].

Frames come from ``output_type="np"``; a registered model family's call defaults
(:mod:`sencache.runtime.call_defaults`) fill what the caller leaves out. Everything else is passed through unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from sencache.runtime.call_defaults import call_defaults


@dataclass
class Generated:
    """One generated clip and the wall time of the pipeline call."""

    frames: np.ndarray  # (F, H, W, 3) float32 in [0, 1]
    seconds: float


def generate(pipe, prompt: str, seed: int, num_inference_steps: int = 50, guidance_scale: float = 5.0,
             negative_prompt: str | None = None, device: str | None = None, **call_kwargs) -> Generated:
    """``pipe(prompt, ...)`` with ``torch.Generator(device).manual_seed(seed)``, frames out as (F, H, W, 3) in
    [0, 1]; ``call_kwargs`` go to the pipeline (after the model family's defaults)."""
    kwargs = {**call_defaults(pipe), **call_kwargs}
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
