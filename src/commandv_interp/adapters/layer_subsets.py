"""Consumes an adapter's layers, produces subsets of them to paste (a layer's share of the
behavior, or a paste without the layer that hurts).

>>> layer_subsets([0, 2, 4], ["single", "cumulative_last"])[2:]
[('single', (4,)), ('cumulative_last', (4,)), ('cumulative_last', (2, 4)), ('cumulative_last', (0, 2, 4))]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ATTRIBUTION_MODES", "layer_subsets", "proper_subsets"]

ATTRIBUTION_MODES = ("single", "leave_one_out", "cumulative_first", "cumulative_last")


def layer_subsets(layers: Sequence[int], modes: Sequence[str] = ATTRIBUTION_MODES) -> list[tuple[str, tuple[int, ...]]]:
    """``(mode, donor_layers)`` subsets to paste, in a stable order."""
    layers = sorted(layers)
    out: list[tuple[str, tuple[int, ...]]] = []
    for mode in modes:
        if mode == "single":
            out += [(mode, (layer,)) for layer in layers]
        elif mode == "leave_one_out":
            out += [(mode, tuple(x for x in layers if x != layer)) for layer in layers if len(layers) > 1]
        elif mode == "cumulative_first":
            out += [(mode, tuple(layers[:k])) for k in range(1, len(layers) + 1)]
        elif mode == "cumulative_last":
            out += [(mode, tuple(layers[-k:])) for k in range(1, len(layers) + 1)]
        else:
            raise ValueError(f"mode must be one of {ATTRIBUTION_MODES}, got {mode!r}")
    return out


def proper_subsets(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """Each layer alone, then all but one, without repeats and without the full set (empty for one layer).

    >>> proper_subsets([0, 2, 4])
    [(0,), (2,), (4,), (2, 4), (0, 4), (0, 2)]
    >>> proper_subsets([0, 2])
    [(0,), (2,)]
    """
    full = tuple(sorted(layers))
    subsets = dict.fromkeys(s for _, s in layer_subsets(full, ("single", "leave_one_out")) if s != full)
    return list(subsets)
