"""The calibration target of a pipeline: what calibration needs from it (conditioning, initial noise, the
transformer call, the sampler step), one class per pipeline family; others are refused by name."""

from __future__ import annotations

from sencache.calibration.cogvideox_target import CogVideoXTarget, is_cogvideox
from sencache.calibration.flux_target import FluxTarget, is_flux
from sencache.calibration.hunyuan_target import HunyuanVideoTarget, is_hunyuan_video
from sencache.calibration.ltx_target import LTXTarget, is_ltx
from sencache.calibration.target import PipelineTarget
from sencache.calibration.wan_target import WanTarget, is_wan
from sencache.errors import UnsupportedModelError


def target_for(pipe, pipe_kwargs: dict) -> PipelineTarget:
    """The target for ``pipe``: WanPipeline (Wan 2.1, and Wan 2.2's two experts), CogVideoXPipeline, LTXPipeline,
    HunyuanVideoPipeline (text-to-video) or FluxPipeline (text-to-image)."""
    if is_wan(pipe):
        return WanTarget(pipe, pipe_kwargs)
    if is_cogvideox(pipe):
        return CogVideoXTarget(pipe, pipe_kwargs)
    if is_ltx(pipe):
        return LTXTarget(pipe, pipe_kwargs)
    if is_flux(pipe):
        return FluxTarget(pipe, pipe_kwargs)
    if is_hunyuan_video(pipe):
        return HunyuanVideoTarget(pipe, pipe_kwargs)
    raise UnsupportedModelError(
        f"calibrate supports WanPipeline, CogVideoXPipeline, LTXPipeline, HunyuanVideoPipeline and FluxPipeline for "
        f"now, got {type(pipe).__name__}; "
        f"import the authors' table (sencache import-profile) or open an issue with the model name")
