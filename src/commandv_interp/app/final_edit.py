"""App (final edit): consumes a :class:`~commandv_interp.pipeline.Transfer`, the donor's whole adapter, the two
models and held-out prompts, produces the report section on the edit the transfer applies, layer by layer
(:func:`~commandv_interp.analysis.final_edit_analysis`: what the polish changed, which layers carry the behavior):
tidy rows, a figure (:func:`~commandv_interp.plotting.plot_polish_change`) and a Markdown table per recipient layer.

Shared by ``commandv demo`` (one section per behavior) and ``commandv analyze`` (one transfer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from commandv_interp import analysis, plotting
from commandv_interp.adapters import Adapter
from commandv_interp.pipeline.agreement import DonorTargets
from commandv_interp.pipeline.labels import transfer_label

__all__ = ["final_edit_section", "FINAL_EDIT_INTRO"]

FINAL_EDIT_INTRO = (
    "*Alone* and *without*: the agreement with the donor + adapter when only that recipient layer of the final edit "
    "acts, or all but it. *cos/ratio vs paste*: the polished delta against the compiled paste's it started from "
    "(1 and 1: the polish kept the paste; cosine near 0: it overwrote it); *vs scratch*: against the distillation "
    "from scratch; *‖δ‖/‖h‖*: the final edit's push against the residual.")


def final_edit_section(donor_model, recipient_model, donor_adapter: Adapter, t, prompts: Sequence[str], out: Path,
                       name: str, heading: str = "###", targets: DonorTargets | None = None,
                       attribution: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Analyze the final edit of ``t`` on ``prompts`` and draw it into ``out/final_edit_<name>.png`` (and PDF).
    ``targets``: the donor's answers to ``prompts``, if already made (else generated, 8 new tokens);
    ``attribution``: the final edit's layer attribution against them, if already made (else scored here).

    Returns:
        The tidy rows (:func:`~commandv_interp.analysis.final_edit_analysis`'s frames, concatenated, each row with
        ``analysis`` = ``attribution`` or ``change``), the Markdown lines (a ``heading`` titled with the edit's
        label, the per-layer table, the figure) and the figure's files (PNG, PDF).
    """
    import matplotlib.pyplot as plt

    found = analysis.final_edit_analysis(donor_model, recipient_model, donor_adapter, t, list(prompts),
                                         targets=targets, attribution=attribution)
    frame = pd.concat([f.assign(analysis=kind) for kind, f in found.items()], ignore_index=True)
    title = f"{name}: {transfer_label(t)} (`{t.choice}`)"
    fig = plotting.plot_polish_change(found["change"], found["attribution"], title=title.replace("`", ""))
    figures = plotting.save_figure(fig, Path(out) / f"final_edit_{name}")
    plt.close(fig)
    lines = [f"{heading} {title}", "", _final_edit_table(found), "", f"![final edit, {name}]({figures[0].name})", ""]
    return frame, lines, figures


def _final_edit_table(found: dict[str, pd.DataFrame]) -> str:
    """Markdown, one row per recipient layer of the final edit."""
    crit = found["attribution"][found["attribution"].metric == "criterion"]
    every = [int(x) for x in str(crit[crit.condition == "all"].layers.iloc[0]).split(",")]
    change = found.get("change")
    rows = ["| recipient layer | alone | without | cos vs paste | ratio vs paste | cos vs scratch | ‖δ‖/‖h‖ |",
            "|---|---|---|---|---|---|---|"]

    def cell(frame, **where) -> str:
        if frame is None:
            return "–"
        mask = pd.Series(True, index=frame.index)
        for column, value in where.items():
            mask &= frame[column] == value
        return f"{frame[mask].value.iloc[0]:.2f}" if mask.any() else "–"

    final = "polished" if (change.edit == "polished").any() else "paste"
    for layer in every:
        rest = ",".join(str(x) for x in every if x != layer)
        rows.append(f"| {layer} | {cell(crit, condition='single', layers=str(layer))} | "
                    f"{cell(crit, condition='leave_one_out', layers=rest) if rest else '–'} | "
                    f"{cell(change, recipient_layer=layer, reference='paste', metric='delta_cosine')} | "
                    f"{cell(change, recipient_layer=layer, reference='paste', metric='norm_ratio')} | "
                    f"{cell(change, recipient_layer=layer, reference='scratch', metric='delta_cosine')} | "
                    f"{cell(change, recipient_layer=layer, reference='residual', metric='norm_ratio', edit=final)} |")
    whole = cell(crit, condition="all")
    rows += ["", f"All layers together: agreement {whole}; the recipient alone: {cell(crit, condition='none')}."]
    return "\n".join(rows)
