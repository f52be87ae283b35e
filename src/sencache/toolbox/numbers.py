"""Numbers for records and tables: finite floats or None, and one way to print a number that may be missing."""

from __future__ import annotations

import math


def finite_or_none(x) -> float | None:
    """``x`` as a float, or None when it is None or not finite (what JSON records and tables can show)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def fmt_number(v, spec: str = ".3f", none: str = "–") -> str:
    """``v`` formatted with ``spec``, or ``none`` for None or a non-finite float."""
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
