"""The calibration target of a pipeline: what calibration needs from it (conditioning, initial noise, the
transformer call, the sampler step), one class per pipeline family; others are refused by name."""

from __future__ import annotations

from sencache.calibration.cogvideox_target import CogVideoXTarget, is_cogvideox
from sencache.calibration.ltx_target import LTXTarget, is_ltx
from sencache.calibration.wan_target import WanTarget, is_wan
from sencache.errors import UnsupportedModelError


def target_for(pipe, pipe_kwargs: dict) -> WanTarget | CogVideoXTarget | LTXTarget:
    """The target for ``pipe``: WanPipeline, CogVideoXPipeline or LTXPipeline (text-to-video)."""
    if is_wan(pipe):
        return WanTarget(pipe, pipe_kwargs)
    if is_cogvideox(pipe):
        return CogVideoXTarget(pipe, pipe_kwargs)
    if is_ltx(pipe):
        return LTXTarget(pipe, pipe_kwargs)
    raise UnsupportedModelError(
        f"calibrate supports WanPipeline, CogVideoXPipeline and LTXPipeline for now, got {type(pipe).__name__}; "
        f"import the authors' table (sencache import-profile) or open an issue with the model name")
