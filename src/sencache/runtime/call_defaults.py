"""Pipeline call defaults per model family: the sizes and text length a model was trained for.

A diffusers pipeline's own defaults are its reference model's (WanPipeline: Wan 2.1's 81 x 480 x 832). A
model trained at another size says what to pass instead, in one of two ways, and the library itself knows
no particular model:

* as data: a ``sencache_call_defaults.json`` next to ``model_index.json`` (``{"height": 32, ...}``), which
  :func:`sencache.runtime.loading.load_pipeline` reads and attaches to the pipeline it loads
  (:func:`set_call_defaults`);
* as code: a registered :class:`ModelFamily` that recognises its pipelines however they were made
  (``sencache.demo_model`` registers the demo family when it is imported) and may check sizes.

:func:`call_defaults` prefers the pipeline's own attached defaults, then its family's.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sencache.errors import SenCacheError

CALL_DEFAULTS_FILE = "sencache_call_defaults.json"


@dataclass(frozen=True)
class ModelFamily:
    """A family of pipelines with their own call defaults.

    Args:
        name: shown in messages.
        matches: ``matches(pipe)`` is True for the family's pipelines.
        defaults: ``defaults()`` -> keyword arguments for the pipeline call (num_frames, height, width,
            max_sequence_length, ...).
        sizes: ``sizes(frames, height, width)`` -> the call's size arguments, raising a SenCacheError for a
            size the model cannot take; None passes the sizes through unchecked.
    """

    name: str
    matches: Callable[[Any], bool]
    defaults: Callable[[], dict]
    sizes: Callable[[int, int, int], dict] | None = None


FAMILIES: list[ModelFamily] = []
PIPELINE_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline -> its folder's defaults


def read_call_defaults(folder) -> dict | None:
    """The ``sencache_call_defaults.json`` of a pipeline folder, or None when it has none."""
    path = Path(folder) / CALL_DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SenCacheError(f"cannot read {path}: {exc}; fix or delete it") from None
    if not isinstance(data, dict):
        raise SenCacheError(f"{path} must hold a JSON object of pipeline call arguments")
    return data


def set_call_defaults(pipe, defaults: dict) -> None:
    """Attach call defaults to one pipeline (what loading a folder with ``sencache_call_defaults.json`` does)."""
    PIPELINE_DEFAULTS[pipe] = dict(defaults)


def register_family(family: ModelFamily) -> None:
    """Add (or replace, by name) a model family."""
    FAMILIES[:] = [f for f in FAMILIES if f.name != family.name] + [family]


def family_of(pipe) -> ModelFamily | None:
    """The registered family ``pipe`` belongs to, or None."""
    return next((f for f in FAMILIES if f.matches(pipe)), None)


def call_defaults(pipe) -> dict:
    """Keyword arguments every generation of ``pipe`` should get unless the caller says otherwise."""
    own = PIPELINE_DEFAULTS.get(pipe)
    if own is not None:
        return dict(own)
    family = family_of(pipe)
    return family.defaults() if family is not None else {}


def size_kwargs(pipe, frames: int | None = None, height: int | None = None, width: int | None = None) -> dict:
    """Pipeline size arguments for a (frames, height, width) video; None keeps the family's (or pipeline's)
    default, and a family checks what its model can take."""
    family = family_of(pipe)
    trained = call_defaults(pipe)
    chosen = [v if v is not None else trained.get(k) for v, k in
              ((frames, "num_frames"), (height, "height"), (width, "width"))]
    if family is not None and family.sizes is not None and None not in chosen:
        return family.sizes(*chosen)
    return {k: v for k, v in zip(("num_frames", "height", "width"), chosen) if v is not None}
