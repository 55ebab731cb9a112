"""App (analyze): consumes a :class:`~commandv_interp.pipeline.Transfer` (e.g. a ``commandv transfer`` folder), the two
models and prompts, produces the per-layer report of the edit that transfer applies: CSVs, figures with captions and
``report.md``.

The report analyzes what was applied, and says which kind of edit it is: the polished native adapter when the
transfer chose a polish (its layer attribution, with the per-layer fidelity of the paste it started from beside it),
the paste when it chose one, the fresh adapter when it chose the distillation from scratch (attribution only: there
is no paste to compare layer by layer). The donor's answers always come from its whole adapter. Then the final edit
layer by layer, as the demo shows it (:mod:`~commandv_interp.app.final_edit`): what the polish changed and which
recipient layers carry the behavior (``final_edit.csv``, ``final_edit_transfer.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from commandv_interp import analysis, plotting
from commandv_interp.access import ModelAccess, open_model
from commandv_interp.app.final_edit import FINAL_EDIT_INTRO, final_edit_section
from commandv_interp.io import atomic_write
from commandv_interp.pipeline import Transfer
from commandv_interp.pipeline.applied import answer_targets, applied_edit, subset_attribution
from commandv_interp.pipeline.labels import transfer_label

__all__ = ["analyze_transfer"]


def analyze_transfer(t: Transfer, donor_model: ModelAccess, recipient_model: ModelAccess, prompts: Sequence[str],
                     out: str | Path) -> list[Path]:
    """Write ``attribution.csv``, ``fidelity.csv`` (when the transfer pastes), ``final_edit.csv``, their figures and
    ``report.md`` into ``out``; return the files. Refuses models other than the ones the transfer was made with."""
    import matplotlib.pyplot as plt

    donor, recipient = open_model(donor_model), open_model(recipient_model)
    t.check_models(donor, recipient)
    out, prompts = Path(out), list(prompts)
    targets = answer_targets(t, donor, recipient, prompts)  # the donor's answers, shared by both attributions
    attribution = subset_attribution(recipient, targets, applied_edit(t), batch_size=t.config.batch_size)
    kind, native = transfer_label(t), t.polished is not None
    frames = {"attribution": attribution}
    if t.converters is not None:
        frames["fidelity"] = analysis.state_delta_fidelity(donor, recipient, t.adapter, t.converters, prompts,
                                                           positions=t.positions, alpha=t.alpha)
    out.mkdir(parents=True, exist_ok=True)
    files = [atomic_write(out / f"{name}.csv", lambda p, frame=frame: frame.to_csv(p, index=False))
             for name, frame in frames.items()]
    where = "recipient layers of the polished adapter" if native else "pasted donor layers"
    fig = plotting.plot_attribution(attribution, metric="criterion", title=f"{kind}: agreement by layer subset")
    fig.axes[0].set_xlabel(f"{where}, by mode")
    files += plotting.save_figure(fig, out / "attribution")
    captions = [("attribution.png", f"Agreement with the donor+adapter (its whole adapter) under the applied edit, "
                                    f"{kind}, restricted to some of its {where}: which layers carry it.")]
    if "fidelity" in frames:
        which = "the paste the polish started from" if native else "the paste"
        fig = plotting.plot_fidelity(frames["fidelity"], ["state_cosine", "delta_cosine", "backward_cosine"],
                                     title=f"{t.converters.donor_model} → {t.converters.recipient_model}: "
                                           f"per-layer fidelity of {which}")
        files += plotting.save_figure(fig, out / "fidelity")
        captions.append(("fidelity.png", f"Per donor layer, for {which}: how closely the converted recipient state "
                                         "and the pasted delta point where the donor's own do (cosine; 1 is exact)."))
    plt.close("all")
    final, section, figures = final_edit_section(donor, recipient, t.donor_adapter, t, prompts, out, "transfer",
                                                 targets=targets, attribution=attribution if native else None)
    files += [atomic_write(out / "final_edit.csv", lambda p: final.to_csv(p, index=False)), *figures]
    lines = [f"# Analysis of `{t.choice}`: {kind}", "",
             f"{len(prompts)} prompts; layer map of the paste {t.layer_map or '(none: no paste)'}"
             + (f"; the edit analyzed is the polished adapter at recipient layers {t.polished.layers}." if native
                else "."), ""]
    for image, caption in captions:
        lines += [f"![{caption}]({image})", "", f"*{caption}*", ""]
    best = attribution[attribution.metric == "criterion"].sort_values("value", ascending=False).head(5)
    lines += ["Top layer subsets by agreement:", "", "| condition | layers | agreement |", "|---|---|---|"]
    lines += [f"| {r.condition} | {r.layers} | {r.value:.3f} |" for r in best.itertuples()]
    lines += ["", "## The final edit, layer by layer", "", f"On the {len(prompts)} prompts. {FINAL_EDIT_INTRO}", "",
              *section]
    report = atomic_write(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    return files + [report]
