"""The calibration target of a pipeline: what calibration needs from it (conditioning, initial noise, the
transformer call, the sampler step), one class per pipeline family; others are refused by name."""

from __future__ import annotations

from sencache.calibration.targets.base import PipelineTarget
from sencache.calibration.targets.cogvideox import CogVideoXTarget, is_cogvideox
from sencache.calibration.targets.cogvideox_i2v import CogVideoXImageToVideoTarget, is_cogvideox_i2v
from sencache.calibration.targets.flux import FluxTarget, is_flux
from sencache.calibration.targets.hunyuan import HunyuanVideoTarget, is_hunyuan_video
from sencache.calibration.targets.ltx import LTXTarget, is_ltx
from sencache.calibration.targets.ltx_i2v import LTXImageToVideoTarget, is_ltx_i2v
from sencache.calibration.targets.wan import WanTarget, is_wan
from sencache.calibration.targets.wan_i2v import WanImageToVideoTarget, is_wan_i2v
from sencache.errors import UnsupportedModelError

# (does this pipeline match?, its target), first match wins: each I2V sibling before its text-to-video family
TARGETS = (
    (is_wan, WanTarget), (is_wan_i2v, WanImageToVideoTarget),
    (is_cogvideox_i2v, CogVideoXImageToVideoTarget), (is_ltx_i2v, LTXImageToVideoTarget),
    (is_cogvideox, CogVideoXTarget), (is_ltx, LTXTarget), (is_flux, FluxTarget), (is_hunyuan_video, HunyuanVideoTarget),
)


def target_for(pipe, pipe_kwargs: dict) -> PipelineTarget:
    """The target for ``pipe``: WanPipeline (Wan 2.1, and Wan 2.2's two experts), CogVideoXPipeline, LTXPipeline,
    HunyuanVideoPipeline (text-to-video), their image-to-video siblings WanImageToVideoPipeline,
    CogVideoXImageToVideoPipeline and LTXImageToVideoPipeline, or FluxPipeline (text-to-image)."""
    for matches, target in TARGETS:
        if matches(pipe):
            return target(pipe, pipe_kwargs)
    raise UnsupportedModelError(
        f"calibrate supports WanPipeline, CogVideoXPipeline, LTXPipeline, HunyuanVideoPipeline and FluxPipeline for "
        f"now, got {type(pipe).__name__} (image-to-video: WanImageToVideoPipeline, CogVideoXImageToVideoPipeline and "
        f"LTXImageToVideoPipeline); "
        f"import the authors' table (sencache import-profile) or open an issue with the model name")
