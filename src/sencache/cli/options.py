"""The one rule every command resolves ``--model``, ``--profile``, ``--device`` and ``--threads`` by.

* ``--model DIR``: a diffusers pipeline folder; default the shipped demo model.
* ``--profile FILE``: default ``sencache_profile.json`` inside the model folder.
* ``--device``: default ``cuda:LOCAL_RANK`` when there is a GPU for every rank, else the CPU.
* ``--dtype``: the weights' dtype (float32, bfloat16, float16), default float32.
* ``--threads N``: torch CPU threads (default 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sencache import demo_model
from sencache.errors import SenCacheError
from sencache.runtime.distributed import default_device
from sencache.runtime.loading import load_pipeline

PROFILE_NAME = "sencache_profile.json"


def add_model_arguments(parser: argparse.ArgumentParser, profile: bool = True) -> None:
    """``--model``, ``--device``, ``--dtype`` (and ``--profile``) with the shared defaults."""
    parser.add_argument("--model", default=None, help="diffusers pipeline folder (default: the shipped demo model)")
    if profile:
        parser.add_argument("--profile", default=None,
                            help=f"sensitivity profile JSON (default: {PROFILE_NAME} in the model folder)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:LOCAL_RANK when CUDA is available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights' dtype (default float32; bfloat16 is what Wan users run on GPUs)")


def resolve_model_dir(model) -> Path:
    """``--model`` as a folder (default: the shipped demo model); a clear error if it is not one."""
    if model is None:
        model = getattr(demo_model, "DEFAULT_MODEL_DIR", None)  # read at call time: a build may ship no demo
        if model is None:
            raise SenCacheError("no --model given and this sencache ships no demo model; pass --model DIR "
                                "(a diffusers pipeline folder)")
    path = Path(model)
    if not path.is_dir():
        raise SenCacheError(f"model folder {path} not found; pass --model DIR (a diffusers pipeline folder)")
    return path


def resolve_profile_path(profile, model_dir: Path) -> Path:
    """``--profile`` as a path (default: the profile inside the model folder)."""
    return Path(profile) if profile else Path(model_dir) / PROFILE_NAME


def resolve_device(device) -> torch.device:
    """``--device`` as a torch device (default: cuda:LOCAL_RANK when CUDA is available, else the CPU)."""
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except RuntimeError:
        raise SenCacheError(f"--device {device!r} is not a torch device (try cpu, cuda, cuda:1)") from None


def load_model(args, progress: bool = False):
    """(pipeline, model folder) for the parsed ``args`` by the rules above."""
    model_dir = resolve_model_dir(getattr(args, "model", None))
    pipe = load_pipeline(model_dir, resolve_device(getattr(args, "device", None)), getattr(args, "dtype", "float32"),
                         progress=progress)
    return pipe, model_dir


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``, the torch CPU thread count."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo model is small, and more threads than free "
                             "cores slow torch down many times over)")


def set_threads(n: int) -> None:
    """Apply ``--threads``."""
    if n < 1:
        raise SenCacheError("--threads must be at least 1")
    torch.set_num_threads(n)
