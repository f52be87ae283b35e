"""Pipeline call defaults per model family: the sizes and text length a model was trained for.

A diffusers pipeline's own defaults are its reference model's (WanPipeline: Wan 2.1's 81 x 480 x 832). A
model trained at another size — like sencache's shipped demo model — registers a :class:`ModelFamily`
that recognises its pipelines and says what to pass instead; :func:`call_defaults` and :func:`size_kwargs`
consult the registry, so the library itself knows no particular model. ``sencache.demo_model`` registers
the demo family when it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


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


def register_family(family: ModelFamily) -> None:
    """Add (or replace, by name) a model family."""
    FAMILIES[:] = [f for f in FAMILIES if f.name != family.name] + [family]


def family_of(pipe) -> ModelFamily | None:
    """The registered family ``pipe`` belongs to, or None."""
    return next((f for f in FAMILIES if f.matches(pipe)), None)


def call_defaults(pipe) -> dict:
    """Keyword arguments every generation of ``pipe`` should get unless the caller says otherwise."""
    family = family_of(pipe)
    return family.defaults() if family is not None else {}


def size_kwargs(pipe, frames: int | None = None, height: int | None = None, width: int | None = None) -> dict:
    """Pipeline size arguments for a (frames, height, width) video; None keeps the family's (or pipeline's)
    default, and a family checks what its model can take."""
    family = family_of(pipe)
    if family is None:
        given = {"num_frames": frames, "height": height, "width": width}
        return {k: v for k, v in given.items() if v is not None}
    trained = family.defaults()
    chosen = [v if v is not None else trained.get(k) for v, k in
              ((frames, "num_frames"), (height, "height"), (width, "width"))]
    if family.sizes is not None:
        return family.sizes(*chosen)
    return {k: v for k, v in zip(("num_frames", "height", "width"), chosen) if v is not None}
