"""Consumes a finished candidate search and the candidate it chose, produces a warning when the held-out criterion
could not tell that candidate from the unedited recipient: its criterion is less than one scoring prompt's weight
(:func:`~commandv_interp.pipeline.scale.tolerance`) above the plain recipient's. The transfer then chose among
candidates the criterion sees as no better than doing nothing, and its choice says little.

Measured on the label-free benchmark's candidate tables (seeds 0–4): this never happened in the 200 runs from
ReFT adapters (zoo and generated worlds) nor in the 90 from generated worlds' LoRA donors; it happened in 24 of the
90 runs from steering vectors, whose steered answers are often garbled past their first words, and 8 of those 24
missed the bar (of 14 misses in all). It is a warning to check the result with labels, not a verdict.
"""

from __future__ import annotations

import warnings

from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.scale import tolerance
from commandv_interp.pipeline.search import REFERENCE

__all__ = ["BlindCriterionWarning", "criterion_margin", "warn_if_blind"]


class BlindCriterionWarning(UserWarning):
    """The held-out criterion could not tell the chosen edit from the unedited recipient."""


def criterion_margin(search, chosen: Candidate) -> tuple[float, float]:
    """``(margin, tolerance)``: the chosen candidate's criterion minus the unedited recipient's, both on all the
    scoring prompts, and one scoring prompt's weight in the criterion. ``search`` is a finished
    :class:`~commandv_interp.pipeline.search.CandidateSearch` (its ``rows`` and ``row``)."""
    row = search.row(chosen)
    base = next(r for r in search.rows if r["candidate"] == REFERENCE)
    n_changed = int(row["n_changed"])
    return float(row["criterion"]) - float(base["criterion"]), tolerance(n_changed, int(row["n_scoring"]) - n_changed)


def warn_if_blind(search, chosen: Candidate) -> bool:
    """Warn (:class:`BlindCriterionWarning`) when ``chosen`` is less than one scoring prompt above the unedited
    recipient on the criterion; returns whether it warned."""
    margin, tol = criterion_margin(search, chosen)
    if margin >= tol:
        return False
    warnings.warn(f"the held-out criterion cannot tell the chosen edit ({chosen.name!r}) from the unedited "
                  f"recipient: it is {margin:+.3f} above it, less than one scoring prompt ({tol:.3f}). The donor's "
                  "answers on these prompts may be out of the recipient's reach (a steering vector's garbled answers, "
                  "for one): check the result with labels, or give prompts whose answers the donor's edit changes "
                  "in a way the recipient can follow", BlindCriterionWarning, stacklevel=3)
    return True
