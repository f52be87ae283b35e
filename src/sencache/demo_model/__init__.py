"""The shipped demo model: a small latent text-to-video WanPipeline (its own tiny VAE included) trained here on CPU.

``DEFAULT_MODEL_DIR`` is the diffusers folder (``WanPipeline.from_pretrained(DEFAULT_MODEL_DIR)``);
``DEFAULT_PROFILE`` its SenCache sensitivity profile, measured with ``sencache calibrate``.
"""

from __future__ import annotations

from pathlib import Path

from sencache.demo_model.build import (
    demo_call_kwargs,
    is_demo_pipeline,
    pipeline_size_kwargs,
)
from sencache.runtime.call_defaults import ModelFamily, register_family
from sencache.runtime.loading import load_pipeline as load_pipeline_folder

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights"
DEFAULT_PROFILE = DEFAULT_MODEL_DIR / "sencache_profile.json"


# generations of demo pipelines default to the trained clip size and text length (WanPipeline's own defaults
# are Wan 2.1's 81 x 480 x 832), and sizes its VAE cannot take are refused
register_family(ModelFamily("sencache demo model", is_demo_pipeline, demo_call_kwargs, pipeline_size_kwargs))


def load_pipeline(path=None, **kwargs):
    """Load the demo model (default) or any diffusers pipeline folder; see
    :func:`sencache.runtime.loading.load_pipeline`."""
    return load_pipeline_folder(path if path is not None else DEFAULT_MODEL_DIR, **kwargs)
