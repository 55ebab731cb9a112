"""Consumes a :class:`~commandv_interp.pipeline.result.Transfer`, the two models and prompts,
produces the edit the transfer applies (a :class:`~commandv_interp.pipeline.candidates.Candidate`: the paste, or
the polished native adapter) and its label-free layer attribution as a tidy frame (its label:
:func:`~commandv_interp.pipeline.labels.transfer_label`).

The attribution scores, by the donor-agreement criterion, the recipient under the applied edit restricted to subsets
of its layers (``single``, ``leave_one_out``; ``all`` is the whole edit, ``none`` the plain recipient) against the
answers of the donor with its *whole* adapter, whatever subset of it the transfer pastes. The layers are donor layers
for a paste and recipient layers for a native adapter. :func:`subset_attribution` is the one attribution by donor
agreement: :func:`~commandv_interp.analysis.edit_attribution` (a native adapter) and
:func:`~commandv_interp.analysis.agreement_attribution` (a paste) call it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters.layer_subsets import layer_subsets
from commandv_interp.pipeline.agreement import (DonorTargets, answer_limit, donor_answers, score_responses,
                                                summarize, targets_from)
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.labels import polish_steps_of
from commandv_interp.pipeline.result import Transfer

__all__ = ["applied_edit", "answer_targets", "edit_attribution", "subset_attribution", "COLUMNS"]

COLUMNS = ["condition", "layers", "n_pairs", "metric", "value", "split"]


def applied_edit(t: Transfer) -> Candidate:
    """What :meth:`Transfer.paste` applies, as a candidate: the polished native adapter, or the paste."""
    if t.polished is not None:
        method = "scratch" if t.converters is None else "polished"
        return Candidate(t.choice, 3, method, "depth" if t.converters is None else "-", t.polished, None,
                         polish_steps=polish_steps_of(t.choice, t.polished))
    return Candidate(t.choice, 2, "paste", "-", t.adapter, t.converters)


def edit_attribution(t: Transfer, donor_model: ModelAccess, recipient_model: ModelAccess, prompts: Sequence[str],
                     max_new_tokens: int | None = None) -> pd.DataFrame:
    """Layer attribution of the applied edit (see the module doc).

    Args:
        t: the transfer; its donor and recipient must be the given models (checked by fingerprint).
        prompts: prompts to score on (held out from the transfer's own, ideally).
        max_new_tokens: at most this many new tokens in the donor's answers (default: what the transfer's answers
            were generated with).

    Returns:
        Tidy rows ``condition (none|all|single|leave_one_out), layers, n_pairs, metric (criterion, agree_changed,
        agree_unchanged, ...), value, split ("agreement")``.
    """
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    t.check_models(donor, recipient)
    targets = answer_targets(t, donor, recipient, list(prompts), max_new_tokens)
    return subset_attribution(recipient, targets, applied_edit(t), batch_size=t.config.batch_size)


def subset_attribution(recipient_model: ModelAccess, targets: DonorTargets, edit: Candidate,
                       modes: Sequence[str] = ("single", "leave_one_out"), alpha: float = 1.0,
                       batch_size: int = 32) -> pd.DataFrame:
    """The one layer attribution of an edit by donor agreement: the recipient alone (``none``), under the whole
    ``edit`` (``all``) and under subsets of its layers (``modes`` of
    :func:`~commandv_interp.adapters.layer_subsets.layer_subsets`: donor layers of a paste, recipient layers of a
    native adapter), each scored against ``targets`` at scale ``alpha``.

    Returns:
        Tidy rows ``condition, layers ("0,2"), n_pairs, metric (criterion, agree_changed, agree_unchanged, ...),
        value, split ("agreement")``; a metric that is NaN for a run (e.g. no unchanged prompts) has no row.
    """
    layers = tuple(edit.edit.layers)
    runs = [("none", (), None), ("all", layers, edit)]
    runs += [(mode, sub, edit.restricted(sub)) for mode, sub in layer_subsets(layers, modes)]
    rows = []
    for condition, sub, candidate in runs:
        deltas = candidate.deltas(recipient_model) if candidate is not None else None
        summary = summarize(score_responses(recipient_model, targets, deltas, alpha, batch_size), targets.changed)
        rows += [{"condition": condition, "layers": ",".join(map(str, sub)), "n_pairs": len(sub), "metric": k,
                  "value": v, "split": "agreement"} for k, v in summary.items()
                 if not (isinstance(v, float) and math.isnan(v))]
    return pd.DataFrame(rows, columns=COLUMNS)


def answer_targets(t: Transfer, donor: ModelAccess, recipient: ModelAccess, prompts: list[str],
                   max_new_tokens: int | None = None) -> DonorTargets:
    """The donor's answers to ``prompts`` with its whole adapter and without, as the transfer's criterion judged its
    own: generated with the transfer's new tokens (or ``max_new_tokens``; fewer where a model's context ends) and
    cut to its behavior span, then paired into targets and foils."""
    tokens, words = t.answer_span
    cap = max_new_tokens if max_new_tokens is not None else (tokens or t.config.max_new_tokens)
    cap = min(answer_limit(model, prompts, cap) for model in (donor, recipient))
    adapted, plain = donor_answers(donor, t.donor_adapter, prompts, cap, t.config.batch_size)
    if words:
        adapted, plain = ([" ".join(text.split()[:words]) for text in texts] for texts in (adapted, plain))
    return targets_from(prompts, adapted, plain, cap)
