"""Consumes the outcome of a transfer (a :class:`~commandv_interp.pipeline.Transfer`, or whether it pastes and how
many distillation steps polished it), produces the one label that says what was applied to the recipient.

Every report, table and ``--json`` output names an edit with these words, so that a user sees which kind of edit
they got: a paste of the donor's adapter as it is, a paste then trained for a few steps on the donor+adapter's
answers, or no paste at all (the distillation from scratch won the search). Where a table compares methods, the
paper-exact paste and the backprop-free paste (``polish_steps=0``) keep rows of their own, with their own labels.

>>> edit_label(pasted=True, polish_steps=0)
'Command-V paste'
>>> edit_label(pasted=True, polish_steps=8)
'Command-V paste + 8 distillation steps'
>>> edit_label(pasted=False, polish_steps=8)
'distillation only (no paste)'
>>> edit_label(pasted=True, polish_steps=8, scale=1.25)
'Command-V paste + 8 distillation steps, scaled ×1.25 on held-out prompts'
"""

from __future__ import annotations

import re
from typing import Any

from commandv_interp.pipeline.scale import scale_of

__all__ = ["edit_label", "transfer_label", "polish_steps_of", "PASTE", "DISTILLATION_ONLY", "PAPER_EXACT_PASTE",
           "BACKPROP_FREE_PASTE"]

PASTE = "Command-V paste"
DISTILLATION_ONLY = "distillation only (no paste)"
PAPER_EXACT_PASTE = "Command-V paste, paper-exact (pinv, relative depth, α = 1)"
"""The row of the paper's configuration where a table compares methods."""
BACKPROP_FREE_PASTE = "Command-V paste, backprop-free (polish_steps=0)"
"""The row of the label-free paste without its polish where a table compares methods."""

_POLISH = re.compile(r"\+polish/(\d+)(?:/|$)")  # <start>+polish/<steps>, optionally /lr=<rate> after it


def edit_label(pasted: bool, polish_steps: int, scale: float = 1.0) -> str:
    """The label of an edit: a paste (``pasted``) or a fresh adapter, trained for ``polish_steps`` distillation
    steps (0: not trained), its delta multiplied by ``scale`` (chosen on the held-out scoring prompts,
    :mod:`~commandv_interp.pipeline.scale`; 1: as trained).

    Raises:
        ValueError: ``polish_steps`` is not an int >= 0, or an edit that is no paste was never trained (no such
            outcome exists: without a paste the distillation is the whole edit).
    """
    if isinstance(polish_steps, bool) or not isinstance(polish_steps, int) or polish_steps < 0:
        raise ValueError(f"polish_steps must be an int >= 0, got {polish_steps!r}")
    if not (isinstance(scale, float | int) and not isinstance(scale, bool) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    suffix = "" if scale == 1 else f", scaled ×{scale:g} on held-out prompts"
    if not pasted:
        if polish_steps == 0:
            raise ValueError("an edit with no paste and no distillation step is no edit; pass pasted=True or the "
                             "number of distillation steps that trained it")
        return DISTILLATION_ONLY + suffix
    if polish_steps == 0:
        return PASTE + suffix
    return f"{PASTE} + {polish_steps} distillation step{'s' if polish_steps != 1 else ''}{suffix}"


def polish_steps_of(choice: str, polished: Any = None) -> int:
    """The distillation steps behind a transfer's choice: the ``+polish/<steps>`` part of its name, else the
    ``polish`` record of the polished adapter's metadata, else 0 (an unpolished paste).

    >>> polish_steps_of("procrustes/depth/layers=4+polish/12"), polish_steps_of("scratch+polish/8/lr=0.016")
    (12, 8)
    >>> polish_steps_of("interface/depth")
    0
    """
    found = _POLISH.search(str(choice))
    if found:
        return int(found.group(1))
    if polished is None:
        return 0
    record = getattr(polished, "metadata", {}).get("polish") or {}
    steps = record.get("steps") if isinstance(record, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"the transfer {choice!r} has a polished adapter but neither its choice nor the adapter's "
                         f"metadata says how many distillation steps trained it (metadata polish {record!r})")
    return steps


def transfer_label(result: Any) -> str:
    """What a :class:`~commandv_interp.pipeline.Transfer` applies, from its public outcome: ``converters`` (None:
    no paste, the distillation from scratch was chosen), ``polished`` (the trained adapter, if any) and ``choice``.

    Raises:
        ValueError: the object has no ``choice``, ``converters`` and ``polished`` (not a transfer).
    """
    missing = [a for a in ("choice", "converters", "polished") if not hasattr(result, a)]
    if missing:
        raise ValueError(f"{type(result).__name__} is not a transfer outcome: it lacks {missing}; pass the Transfer "
                         "that cv.transfer or cv.load_transfer returned")
    pasted = result.converters is not None
    steps = polish_steps_of(result.choice, result.polished) if result.polished is not None else 0
    if not pasted and steps == 0:
        raise ValueError(f"the transfer {result.choice!r} has neither converters nor a polished adapter: it applies "
                         "nothing; reload it from a complete transfer folder")
    return edit_label(pasted, steps, scale_of(result.choice))
