"""Consumes a recipient, the compiled paste a transfer started from, the adapter its polish made of it (and
optionally the distillation-from-scratch adapter) and held-out prompts, produces what the polish changed, recipient
layer by recipient layer, as tidy DataFrames.

At each recipient layer ``l`` and prompt, with ``h`` the recipient's last-prompt-token state under an edit (before
the edit at ``l`` acts, so the edits at earlier layers count) and ``δ(h)`` the edit's delta there:

- ``polished`` vs ``paste``: ``delta_cosine`` (mean cosine of ``δ_polished`` and ``δ_paste``) and ``norm_ratio``
  (mean ``‖δ_polished‖ / ‖δ_paste‖``). Cosine near 1 and ratio near 1: the polish kept the paste (a warm start);
  cosine near 0: it overwrote it. A polish of zero steps gives exactly 1 and 1.
- ``polished`` vs ``scratch``: the same two numbers against the adapter distilled from a fresh start (how far the
  result is from what distillation alone learns).
- each edit vs ``residual``: ``norm_ratio`` ``‖δ‖ / ‖h‖`` (how hard the edit pushes the recipient at that layer).

A layer that only one of two compared edits acts at has no cosine or ratio row (the other's delta there is 0).
:func:`edit_attribution` adds the share of the behavior each layer carries (single layers, leave one out), and
:func:`final_edit_analysis` runs both on a :class:`~commandv_interp.pipeline.Transfer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from commandv_interp.access import ModelAccess, open_model, recorded_states
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edits import placed
from commandv_interp.paste import apply_adapter, compile_paste
from commandv_interp.pipeline.agreement import DonorTargets, donor_targets
from commandv_interp.pipeline.applied import subset_attribution
from commandv_interp.pipeline.candidates import Candidate, rank
from commandv_interp.pipeline.labels import transfer_label
from commandv_interp.types import Float, Tensor

__all__ = ["polish_change", "edit_norms", "edit_attribution", "final_edit_analysis", "CHANGE_COLUMNS", "EDIT_MODES"]

CHANGE_COLUMNS = ["recipient_layer", "edit", "reference", "metric", "value", "split"]
EDIT_MODES = ("single", "leave_one_out")


def _cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean row cosine in float64, ``a·b / sqrt((a·a)(b·b))``: exactly 1 for identical rows."""
    a, b = a.double(), b.double()
    dot, aa, bb = (a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1)
    return float((dot / (aa * bb).sqrt().clamp_min(1e-300)).mean())


def _norm_ratio(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> float:
    """Mean row ``‖a‖ / ‖b‖`` in float64: exactly 1 for identical rows."""
    return float((a.double().norm(dim=-1) / b.double().norm(dim=-1).clamp_min(1e-300)).mean())


def _deltas(access: ModelAccess, adapter: Adapter, prompts: Sequence[str], batch_size: int
            ) -> dict[int, tuple[Tensor, Tensor]]:
    """Recipient layer → (states before the edit at that layer under the whole edit, the edit's deltas there)."""
    if adapter.d_model != access.d_model:
        raise ValueError(f"the adapter has d_model {adapter.d_model} but {access.name!r} has {access.d_model}: pass "
                         "native recipient adapters (a compiled paste, a polished or a scratch adapter)")
    states = recorded_states(access, adapter.layers, prompts, apply_adapter(access, adapter), batch_size)
    out = {}
    with torch.no_grad():
        for layer, iv in adapter.interventions.items():
            h = states[layer]
            out[layer] = (h, placed(iv, torch.device("cpu")).delta(h.to(torch.float32)).float())
    return out


def polish_change(recipient_model: ModelAccess | object, paste_adapter_compiled: Adapter | None,
                  polished_adapter: Adapter,
                  prompts: Sequence[str], scratch_adapter: Adapter | None = None, split: str = "test",
                  batch_size: int = 32) -> pd.DataFrame:
    """What the polish changed, per recipient layer (see the module doc).

    Args:
        recipient_model: the recipient the adapters edit.
        paste_adapter_compiled: the paste the polish started from, compiled to a native recipient adapter
            (:func:`~commandv_interp.paste.compile_paste`); None when there was no paste (distillation only): then
            only the ``residual`` (and ``scratch``) rows.
        polished_adapter: the adapter the polish made of it.
        prompts: held-out prompts (``split`` names them in the output).
        scratch_adapter: the distillation-from-scratch adapter, to compare with (optional).

    Returns:
        Tidy rows ``recipient_layer, edit, reference, metric, value, split``.

    Example:
        >>> paste = cv.compile_paste(t.adapter, t.converters)  # doctest: +SKIP
        >>> polish_change(recipient, paste, t.polished, test_prompts)  # doctest: +SKIP
    """
    access = open_model(recipient_model)
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"polish_change needs a non-empty list of prompts, got {prompts!r}")
    prompts = list(prompts)
    edits = {"polished": polished_adapter}
    if paste_adapter_compiled is not None:
        edits["paste"] = paste_adapter_compiled
    if scratch_adapter is not None:
        edits["scratch"] = scratch_adapter
    runs = {name: _deltas(access, adapter, prompts, batch_size) for name, adapter in edits.items()}
    rows = []

    def add(layer: int, edit: str, reference: str, metric: str, value: float) -> None:
        rows.append({"recipient_layer": layer, "edit": edit, "reference": reference, "metric": metric,
                     "value": value, "split": split})

    for reference in [r for r in ("paste", "scratch") if r in runs]:
        for layer in sorted(set(runs["polished"]) & set(runs[reference])):
            mine, theirs = runs["polished"][layer][1], runs[reference][layer][1]
            add(layer, "polished", reference, "delta_cosine", _cosine(mine, theirs))
            add(layer, "polished", reference, "norm_ratio", _norm_ratio(mine, theirs))
    frame = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    return pd.concat([frame] + [_residual_rows(run, name, split) for name, run in runs.items()], ignore_index=True)


def _residual_rows(run: dict[int, tuple[Tensor, Tensor]], edit: str, split: str) -> pd.DataFrame:
    return pd.DataFrame([{"recipient_layer": layer, "edit": edit, "reference": "residual", "metric": "norm_ratio",
                          "value": _norm_ratio(delta, h), "split": split} for layer, (h, delta) in sorted(run.items())],
                        columns=CHANGE_COLUMNS)


def edit_norms(recipient_model: ModelAccess | object, adapter: Adapter, prompts: Sequence[str], edit: str = "paste",
               split: str = "test", batch_size: int = 32) -> pd.DataFrame:
    """Per recipient layer, ``‖δ‖ / ‖h‖`` of a native recipient adapter (rows as :func:`polish_change`'s
    ``residual`` rows, named ``edit``): how hard an edit that no polish changed pushes the recipient."""
    access = open_model(recipient_model)
    return _residual_rows(_deltas(access, adapter, list(prompts), batch_size), edit, split)


def edit_attribution(donor_model: ModelAccess | object, recipient_model: ModelAccess | object, donor_adapter: Adapter,
                     recipient_adapter: Adapter, prompts: Sequence[str], modes: Sequence[str] = EDIT_MODES,
                     max_new_tokens: int = 8, targets: DonorTargets | None = None) -> pd.DataFrame:
    """The share of the behavior each layer of a native recipient adapter carries: the recipient under subsets of
    its layers (``all``, each ``single`` layer, ``leave_one_out``, …) scored by the donor-agreement criterion
    against the donor with its whole ``donor_adapter`` (no labels), beside ``none`` (the recipient alone).
    ``targets``: the donor's answers to ``prompts`` already made (e.g. as a transfer's criterion judged its own,
    :func:`~commandv_interp.pipeline.applied.answer_targets`), instead of generating them.

    Returns:
        Tidy rows ``condition, layers, n_pairs, metric, value, split ("agreement")`` as
        :func:`~commandv_interp.analysis.agreement_attribution` (both are
        :func:`~commandv_interp.pipeline.applied.subset_attribution`); ``layers`` are recipient layers.
    """
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    if recipient_adapter.d_model != recipient.d_model:
        raise ValueError(f"recipient_adapter has d_model {recipient_adapter.d_model}, {recipient.name!r} has "
                         f"{recipient.d_model}: pass the polished (or compiled) recipient adapter")
    if targets is None:
        targets = donor_targets(donor, donor_adapter, list(prompts), max_new_tokens)
    native = Candidate("recipient_adapter", 3, "native", "-", recipient_adapter)
    return subset_attribution(recipient, targets, native, modes)


def _scratch_of(result) -> Adapter | None:
    """The best-scored round of the distillation from scratch that the transfer ran beside its paste (by its
    ``candidates`` rows, by :func:`~commandv_interp.pipeline.candidates.rank`), if any."""
    rounds = getattr(result, "rounds", None) or {}
    table = getattr(result, "candidates", None)
    if table is None or "candidate" not in getattr(table, "columns", ()):
        return None
    rows = table[table.candidate.astype(str).str.startswith("scratch+polish/") & table.candidate.isin(list(rounds))]
    if rows.empty:
        return None
    best = rank(rows).iloc[0]
    return rounds[str(best.candidate)]


def final_edit_analysis(donor_model: ModelAccess | object, recipient_model: ModelAccess | object,
                        donor_adapter: Adapter, result, prompts: Sequence[str], max_new_tokens: int = 8,
                        targets: DonorTargets | None = None,
                        attribution: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The edit a :class:`~commandv_interp.pipeline.Transfer` applies, analyzed layer by layer on held-out prompts.

    Args:
        donor_model, recipient_model: the two models; donor_adapter: the donor's whole adapter (the teacher).
        result: the transfer (reads ``choice``, ``converters``, ``polished``, ``rounds``, ``adapter``,
            ``positions``, ``alpha``).
        prompts: held-out prompts; targets: the donor's answers to them, if already made (see
            :func:`edit_attribution`).
        attribution: :func:`edit_attribution` of the final edit on these prompts and targets, if already made
            (``commandv analyze`` makes it for a polished transfer): used as it is instead of scoring it again.

    Returns:
        ``{"attribution": ..., "change": ...}``: :func:`edit_attribution` of the final edit (the polished adapter,
        the compiled paste, or the distillation-only adapter), and :func:`polish_change` when the final edit was
        trained (against the paste it started from, if any, and against the distillation from scratch when the
        transfer ran one beside the paste), else :func:`edit_norms` of the paste; every row carries ``label``
        (:func:`~commandv_interp.pipeline.labels.transfer_label`).
    """
    label = transfer_label(result)
    paste = (compile_paste(result.adapter, result.converters, result.positions, result.alpha)
             if result.converters is not None else None)
    final = result.polished if result.polished is not None else paste
    if attribution is None:
        attribution = edit_attribution(donor_model, recipient_model, donor_adapter, final, prompts,
                                       max_new_tokens=max_new_tokens, targets=targets)
    frames = {"attribution": attribution}
    if result.polished is not None:
        scratch = _scratch_of(result) if paste is not None else None  # distillation only: the final edit is it
        frames["change"] = polish_change(recipient_model, paste, result.polished, prompts, scratch)
    else:
        frames["change"] = edit_norms(recipient_model, paste, prompts, "paste")
    return {name: frame.assign(label=label) for name, frame in frames.items()}
