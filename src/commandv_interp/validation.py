"""Consumes values a user hands to a public boundary (the API, the CLI, a study file),
produces the same values checked, or one ``ValueError`` naming the value and the fix.

Every boundary calls these functions, so a value is refused with the same message wherever it enters:
``cv.paste``, ``cv.apply_adapter``, ``cv.compile_paste``, studies and every ``commandv`` option.

``MAX_ALPHA`` is the documented cap on the paste scale α: beyond it the pasted delta swamps the residual stream
(and ``1e30`` overflows float32 into empty generations).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["MAX_ALPHA", "check_alpha", "check_layers", "parse_layers", "check_count"]

MAX_ALPHA = 1e4  # |α| cap: the zoo's useful α lie within ±8; 1e4 already saturates every behavior measured


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """``alpha`` as a float, refused unless a finite real number with ``|alpha| <= MAX_ALPHA``.

    >>> check_alpha(0.5)
    0.5
    >>> check_alpha(1e30, "--alpha")
    Traceback (most recent call last):
    ...
    ValueError: --alpha must be a finite number within ±10000, got 1e+30; use e.g. --alpha 1
    """
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
    if not ok or not math.isfinite(alpha) or abs(alpha) > MAX_ALPHA:
        sep = " " if name.startswith("-") else "="
        raise ValueError(f"{name} must be a finite number within ±{MAX_ALPHA:g}, got {alpha!r}; use e.g. "
                         f"{name}{sep}1")
    return float(alpha)


def check_layers(layers: Iterable[object], n_layers: int | None = None, name: str = "layers",
                 model: str | None = None) -> list[int]:
    """``layers`` as a list of distinct block indices ``0 <= layer < n_layers`` (order kept).

    >>> check_layers([2, 0], 4)
    [2, 0]
    >>> check_layers([1, 1, 1], 4, "--layers")
    Traceback (most recent call last):
    ...
    ValueError: --layers names layer 1 more than once ([1, 1, 1]); give each layer once
    """
    if isinstance(layers, (str, bytes)):
        raise ValueError(f"{name} must be a list of block indices, got the string {layers!r}")
    values = list(layers)
    bad = [v for v in values if not _is_int(v) or v < 0]
    if bad:
        raise ValueError(f"{name} must be block indices (ints >= 0), got {bad[0]!r} in {values!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} names layer {repeated[0]} more than once ({values!r}); give each layer once")
    if n_layers is not None:
        outside = [v for v in values if v >= n_layers]
        if outside:
            of = f"{model!r}" if model else "the model"
            raise ValueError(f"{name} {outside} out of range: {of} has {n_layers} layers (0..{n_layers - 1})")
    return values


def parse_layers(text: str | None, n_layers: int | None = None, name: str = "--layers") -> list[int] | None:
    """Comma-separated block indices (``"0,2,4"``) checked by :func:`check_layers`; ``None`` stays ``None``.

    >>> parse_layers("0, 2")
    [0, 2]
    """
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} takes comma-separated block indices like 0,2,4, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} is empty; give block indices like 0,2,4")
    return check_layers(values, n_layers, name)


def check_count(value: object, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """A size or limit: an int (not a bool, float or string) ``>= minimum``; ``None`` when ``allow_none``.

    >>> check_count(8, "limit")
    8
    >>> check_count("8", "limit")
    Traceback (most recent call last):
    ...
    ValueError: limit must be an int >= 1, got '8' (a str); write it without quotes or decimals, e.g. limit = 8
    """
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        kind = f" (a {type(value).__name__})" if not _is_int(value) else ""
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}{kind}; write it without quotes or "
                         f"decimals, e.g. {name} = {max(minimum, 8)}")
    return value

