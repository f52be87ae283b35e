"""Numbers for records and tables: finite floats or None, JSON-able values, and one way to print a number that may
be missing."""

from __future__ import annotations

import math

import numpy as np


def finite_or_none(x) -> float | None:
    """``x`` as a float, or None when it is None or not finite (what JSON records and tables can show)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def fmt_number(v, spec: str = ".3f", none: str = "–") -> str:
    """``v`` formatted with ``spec``, or ``none`` for None or a non-finite float."""
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def jsonable(obj):
    """``obj`` with non-finite floats as None, numpy scalars as Python numbers and "frames" entries dropped."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if k != "frames"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return jsonable(obj.item())
    return obj
