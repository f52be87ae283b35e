"""One generation through an unchanged diffusers pipeline, returned as frames in [0, 1].

Frames come from ``output_type="np"``; a registered model family's call defaults
(:mod:`sencache.runtime.call_defaults`) fill what the caller leaves out. Everything else is passed through unchanged.
An image pipeline (FluxPipeline: ``.images``, no ``num_frames``) gives a one-frame clip.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from sencache.runtime.call_defaults import call_defaults

logger = logging.getLogger("sencache")
_WARNED: set = set()  # (pipeline class, dropped defaults) already logged


@dataclass
class Generated:
    """One generated clip and the wall time of the pipeline call."""

    frames: np.ndarray  # (F, H, W, 3) float32 in [0, 1]; F = 1 for an image pipeline
    seconds: float


def accepted_arguments(pipe) -> set[str] | None:
    """The keyword arguments ``pipe(...)`` takes, or None when it takes any (``**kwargs``) or cannot be read."""
    try:
        params = inspect.signature(pipe).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _defaults_for(pipe, accepted: set[str] | None) -> dict:
    """The pipeline's call defaults, less those its ``__call__`` does not take (e.g. ``num_frames`` attached by
    ``--frames`` to an image pipeline), which are logged once per pipeline class."""
    defaults = call_defaults(pipe)
    if accepted is None:
        return defaults
    dropped = tuple(sorted(k for k in defaults if k not in accepted))
    if dropped and (type(pipe), dropped) not in _WARNED:
        _WARNED.add((type(pipe), dropped))
        logger.warning("%s takes no %s; ignoring that call default", type(pipe).__name__, ", ".join(dropped))
    return {k: v for k, v in defaults.items() if k in accepted}


def _frames_of(out) -> np.ndarray:
    """The first clip of a pipeline output: ``.frames[0]`` of a video pipeline, or ``.images[0]`` of an image
    pipeline as a one-frame clip."""
    frames = getattr(out, "frames", None)
    if frames is not None:
        return np.asarray(frames[0], dtype=np.float32)
    images = getattr(out, "images", None)
    if images is None:
        raise TypeError(f"{type(out).__name__} has neither .frames nor .images")
    return np.asarray(images[0], dtype=np.float32)[None]  # (H, W, 3) -> (1, H, W, 3)


def generate(pipe, prompt: str, seed: int, num_inference_steps: int = 50, guidance_scale: float = 5.0,
             negative_prompt: str | None = None, device: str | None = None, **call_kwargs) -> Generated:
    """``pipe(prompt, ...)`` with ``torch.Generator(device).manual_seed(seed)``, frames out as (F, H, W, 3) in
    [0, 1] (F = 1 for an image pipeline such as FluxPipeline); ``call_kwargs`` go to the pipeline (after the
    model family's defaults, of which only those the pipeline takes are passed). ``negative_prompt`` is passed
    when the pipeline takes one, or when it is given."""
    accepted = accepted_arguments(pipe)
    kwargs = {**_defaults_for(pipe, accepted), **call_kwargs}
    if negative_prompt is not None or accepted is None or "negative_prompt" in accepted:
        kwargs["negative_prompt"] = negative_prompt
    generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    start = time.perf_counter()
    out = pipe(
        prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
        output_type="np", **kwargs,
    )
    seconds = time.perf_counter() - start
    frames = _frames_of(out)
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    return Generated(frames=np.clip(frames, 0.0, 1.0).astype(np.float32), seconds=seconds)
