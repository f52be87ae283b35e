"""The shipped demo model: a small pixel-space text-to-video WanPipeline trained here on CPU.

``DEFAULT_MODEL_DIR`` is the diffusers folder (``WanPipeline.from_pretrained(DEFAULT_MODEL_DIR)``);
``DEFAULT_PROFILE`` its SenCache sensitivity profile, measured with ``sencache calibrate``.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights"
DEFAULT_PROFILE = DEFAULT_MODEL_DIR / "sencache_profile.json"


def load_pipeline(path=None):
    """Load the demo model (or any diffusers pipeline folder) on the CPU, with a clear error if missing."""
    from diffusers import DiffusionPipeline

    from ..errors import SenCacheError

    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not (path / "model_index.json").exists():
        raise SenCacheError(
            f"no diffusers pipeline at {path} (model_index.json missing); "
            f"train the demo model with `python -m sencache.demo_model.train` or pass --model"
        )
    import json

    index = json.loads((path / "model_index.json").read_text())
    # components saved as [null, null] (the demo model has no VAE) must be passed as None explicitly
    absent = {name: None for name, value in index.items() if isinstance(value, list) and value == [None, None]}
    pipe = DiffusionPipeline.from_pretrained(str(path), **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe
