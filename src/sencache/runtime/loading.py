"""Loading a diffusers pipeline folder the way every sencache command does.

Components saved as ``[null, null]`` in model_index.json (the demo model has no VAE) are passed as
``None`` explicitly; loading errors become one-line SenCacheErrors; progress bars stay quiet.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from sencache.errors import SenCacheError
from sencache.runtime import distributed as dist
from sencache.runtime.call_defaults import read_call_defaults, set_call_defaults


@contextlib.contextmanager
def _quiet_loading(quiet: bool):
    """Hide diffusers' and transformers' loading bars (restored afterwards)."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    was = (d_logging.is_progress_bar_enabled(), t_logging.is_progress_bar_enabled())
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            d_logging.enable_progress_bar()
        if was[1]:
            t_logging.enable_progress_bar()


def load_pipeline(path, device=None, dtype: str = "float32", progress: bool = False):
    """``DiffusionPipeline.from_pretrained(path)`` with null components kept None, moved to ``device``
    (default: cuda:LOCAL_RANK when CUDA is available, else the CPU) in ``dtype``; a folder (or a hub id,
    given as a str that is not a local folder) that cannot be loaded gives a one-line SenCacheError."""
    from diffusers import DiffusionPipeline

    hub_id = isinstance(path, str) and not Path(path).is_dir()
    absent = {}
    if not hub_id:
        path = Path(path)
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (OSError, ValueError):
            raise SenCacheError(f"{path} is not a diffusers pipeline folder (no readable model_index.json); "
                                f"pass --model DIR written by save_pretrained") from None
        absent = {k: None for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is None}
    kwargs = {} if dtype == "float32" else {"dtype": getattr(torch, dtype)}
    with _quiet_loading(not progress):
        try:
            pipe = DiffusionPipeline.from_pretrained(str(path), **absent, **kwargs)
        except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, ... for a bad folder
            lines = [line for line in str(exc).splitlines() if line.strip()]
            why = lines[0] if lines else type(exc).__name__
            if "low_cpu_mem_usage" in why:
                why = "diffusers needs the `accelerate` package to load this model (pip install accelerate)"
            if hub_id:
                raise SenCacheError(f"cannot load the hub model {path} (it is not a local folder either): {why}; "
                                    f"it needs network access or the model in the Hugging Face cache") from None
            raise SenCacheError(f"cannot load a diffusers pipeline from {path}: {why}") from None
    if hub_id:
        return _placed(pipe, device)
    defaults = read_call_defaults(path)  # the size the model was trained for, when its folder says
    if defaults:
        set_call_defaults(pipe, defaults)
    return _placed(pipe, device)


def _placed(pipe, device):
    pipe.to(device if device is not None else dist.default_device())
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe
