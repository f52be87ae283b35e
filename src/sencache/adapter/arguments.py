"""Read named arguments of a hooked forward call cheaply.

``inspect.Signature.bind_partial`` builds a full binding on every call (tens of microseconds, paid per block
per step); the hooks only ever *read* a few arguments, so we resolve each name to its position once.
"""

from __future__ import annotations

import inspect
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgumentReader:
    """Positions of the named parameters of a method (``self`` excluded), for :meth:`get`."""

    def __init__(self, method) -> None:
        parameters = list(inspect.signature(method).parameters.values())[1:]  # drop self
        self.position: dict[str, int] = {}
        for index, parameter in enumerate(parameters):
            if parameter.kind not in _POSITIONAL:
                break  # after *args or a keyword-only marker nothing is positional any more
            self.position[parameter.name] = index

    def get(self, name: str, args: tuple, kwargs: dict, default: Any = None) -> Any:
        """The value passed for ``name`` (by keyword or position), else ``default``."""
        if name in kwargs:
            return kwargs[name]
        index = self.position.get(name)
        if index is not None and index < len(args):
            return args[index]
        return default
