"""The shipped demo model: a small latent text-to-video WanPipeline (its own tiny VAE included) trained here on CPU.

``DEFAULT_MODEL_DIR`` is the diffusers folder (``WanPipeline.from_pretrained(DEFAULT_MODEL_DIR)``);
``DEFAULT_PROFILE`` its SenCache sensitivity profile, measured with ``sencache calibrate``.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights"
DEFAULT_PROFILE = DEFAULT_MODEL_DIR / "sencache_profile.json"


def load_pipeline(path=None, **kwargs):
    """Load the demo model (or any diffusers pipeline folder); see :func:`sencache.loading.load_pipeline`."""
    from ..loading import load_pipeline as _load

    return _load(path, **kwargs)
