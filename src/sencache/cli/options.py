"""The one rule every command resolves ``--model``, ``--profile``, ``--device``, the sizes and ``--threads`` by.

* ``--model DIR_OR_HUB_ID``: a diffusers pipeline folder, or a Hugging Face hub id (``owner/name``: loaded by
  diffusers, which needs network access or the id in the local Hugging Face cache); default the shipped
  demo model.
* ``--profile FILE``: default ``sencache_profile.json`` inside the model folder (a hub id has no folder:
  pass it).
* ``--frames``, ``--height``, ``--width``: the video size of every generation (default: the model's);
  attached to the pipeline as call defaults, so every generation a command makes uses them.
* ``--device``: default ``cuda:LOCAL_RANK`` when there is a GPU for every rank, else the CPU.
* ``--dtype``: the weights' dtype (float32, bfloat16, float16), default float32.
* ``--image FILE``: the conditioning image of an image-to-video pipeline (Wan, LTX-Video, CogVideoX I2V),
  attached as a call default like the sizes; refused for a text-to-video pipeline, required by an I2V one.
* ``--threads N``: torch CPU threads (default 1).
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import torch

from sencache import demo_model
from sencache.errors import SenCacheError
from sencache.runtime.call_defaults import call_defaults, set_call_defaults, size_kwargs
from sencache.runtime.distributed import default_device
from sencache.runtime.loading import load_pipeline

PROFILE_NAME = "sencache_profile.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def add_model_arguments(parser: argparse.ArgumentParser, profile: bool = True, sizes: bool = True) -> None:
    """``--model``, ``--device``, ``--dtype`` (and ``--profile``, ``--frames/--height/--width``) with the shared
    defaults."""
    parser.add_argument("--model", default=None,
                        help="diffusers pipeline folder or hub id, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
                             "(default: the shipped demo model)")
    if profile:
        parser.add_argument("--profile", default=None,
                            help=f"sensitivity profile JSON (default: {PROFILE_NAME} in the model folder)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:LOCAL_RANK when CUDA is available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights' dtype (default float32; bfloat16 is what Wan users run on GPUs)")
    if sizes:
        parser.add_argument("--image", default=None,
                            help="conditioning image (PNG/JPEG) of an image-to-video pipeline, used by every "
                                 "generation of the command")
        parser.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
        parser.add_argument("--height", type=int, default=None, help="video height in pixels (default: the model's)")
        parser.add_argument("--width", type=int, default=None, help="video width in pixels (default: the model's)")


def resolve_model(model) -> Path | str:
    """``--model`` as a local folder (default: the shipped demo model) or a hub id (``owner/name`` that is not
    a local path); a clear error otherwise."""
    if model is None:
        model = getattr(demo_model, "DEFAULT_MODEL_DIR", None)  # read at call time: a build may ship no demo
        if model is None:
            raise SenCacheError("no --model given and this sencache ships no demo model; pass --model DIR "
                                "(a diffusers pipeline folder) or a hub id")
    path = Path(model)
    if path.is_dir():
        return path
    if not path.exists() and HUB_ID.match(str(model)):
        return str(model)
    raise SenCacheError(f"model folder {path} not found; pass --model DIR (a diffusers pipeline folder) or a hub id "
                        f"such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers")


def resolve_profile_path(profile, model: Path | str) -> Path:
    """``--profile`` as a path (default: the profile inside the model folder; a hub id needs ``--profile``)."""
    if profile:
        return Path(profile)
    if isinstance(model, str):
        raise SenCacheError(f"--model {model} is a hub id, so there is no model folder to find its profile in: pass "
                            f"--profile FILE (measure one with `sencache calibrate --model {model} --out FILE`, or "
                            f"convert the authors' table with `sencache import-profile`)")
    return Path(model) / PROFILE_NAME


def _whole_number(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} is a whole number (got {text!r})") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"{what} must be {bounds} (got {value})")
    return value


def seed_value(text: str) -> int:
    """argparse type of every seed: an integer in [0, 2**64), the range torch's generators take."""
    return _whole_number(text, "a seed", 0, 2 ** 64 - 1)


def step_count(text: str) -> int:
    """argparse type of ``--steps``: a whole number >= 1 (commands that need more say so)."""
    return _whole_number(text, "the step count", 1)


def resolve_device(device) -> torch.device:
    """``--device`` as a torch device (default: cuda:LOCAL_RANK when CUDA is available, else the CPU); a device
    this torch build or machine does not have is refused here, before any model loads."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SenCacheError(f"--device {device!r} is not a torch device (try cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise SenCacheError(f"--device {device}: {build}; use --device cpu (or install a CUDA build of torch "
                                f"on a machine with a GPU)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SenCacheError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SenCacheError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def load_model(args, progress: bool = False):
    """(pipeline, model folder or hub id) for the parsed ``args`` by the rules above, with the size flags
    attached as call defaults."""
    model = resolve_model(getattr(args, "model", None))
    image_path = getattr(args, "image", None)
    if image_path is not None and not Path(image_path).is_file():
        raise SenCacheError(f"--image {image_path}: no such file")
    pipe = load_pipeline(model, resolve_device(getattr(args, "device", None)), getattr(args, "dtype", "float32"),
                         progress=progress)
    sizes = [getattr(args, k, None) for k in ("frames", "height", "width")]
    if any(v is not None for v in sizes):
        set_call_defaults(pipe, {**call_defaults(pipe), **size_kwargs(pipe, *sizes)})
    attach_image(pipe, image_path)
    return pipe, model


def takes_image(pipe) -> bool:
    """Whether the pipeline is conditioned on an image (its ``__call__`` has an ``image`` argument)."""
    return "image" in inspect.signature(type(pipe).__call__).parameters


def attach_image(pipe, image_path) -> None:
    """``--image`` as the pipeline's ``image`` call default; an image-to-video pipeline without one, or a
    text-to-video pipeline with one, is refused with what to do."""
    if image_path is None:
        if takes_image(pipe) and "ImageToVideo" in type(pipe).__name__ and "image" not in call_defaults(pipe):
            raise SenCacheError(f"{type(pipe).__name__} is an image-to-video pipeline: pass --image FILE")
        return
    if not takes_image(pipe):
        raise SenCacheError(f"{type(pipe).__name__} takes no image (text-to-video); drop --image")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise SenCacheError(f"--image {image_path}: not an image this machine can read ({exc})") from None
    set_call_defaults(pipe, {**call_defaults(pipe), "image": image})


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
