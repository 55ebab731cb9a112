"""App (analyze): consumes a :class:`~commandv_interp.pipeline.Transfer` (e.g. a ``commandv transfer`` folder), the two
models and prompts, produces the
per-layer faithfulness report of that transfer: CSVs, figures with captions and ``report.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from commandv_interp import analysis, plotting
from commandv_interp.access import ModelAccess
from commandv_interp.io import atomic_write
from commandv_interp.pipeline import Transfer

__all__ = ["analyze_transfer"]


def analyze_transfer(t: Transfer, donor: ModelAccess, recipient: ModelAccess, prompts: Sequence[str],
                     out: str | Path) -> list[Path]:
    """Write ``fidelity.csv``, ``attribution.csv``, their figures and ``report.md`` into ``out``; return the files."""
    import matplotlib.pyplot as plt

    if t.converters is None:
        raise ValueError(f"the transfer {t.choice!r} has no paste (the distillation from scratch was chosen), so there "
                         "are no converters to break down layer by layer; run the report on a transfer whose choice "
                         "is a paste (e.g. cv.transfer(..., polish_steps=0))")
    t.converters.check_recipient(recipient)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(prompts)
    fidelity = analysis.state_delta_fidelity(donor, recipient, t.adapter, t.converters, prompts,
                                             positions=t.positions, alpha=t.alpha)
    attribution = analysis.agreement_attribution(donor, recipient, t.adapter, t.converters, prompts, t.alpha)
    files = []
    for name, frame in (("fidelity", fidelity), ("attribution", attribution)):
        path = out / f"{name}.csv"
        atomic_write(path, lambda p, frame=frame: frame.to_csv(p, index=False))
        files.append(path)
    captions = []
    fig = plotting.plot_fidelity(fidelity, ["state_cosine", "delta_cosine", "backward_cosine"],
                                 title=f"{t.converters.donor_model} → {t.converters.recipient_model}: per-layer fidelity")
    files += plotting.save_figure(fig, out / "fidelity")
    captions.append(("fidelity.png", "Per donor layer: how closely the converted recipient state and the pasted delta "
                                     "point where the donor's own do (cosine; 1 is exact)."))
    fig = plotting.plot_attribution(attribution, metric="criterion")
    files += plotting.save_figure(fig, out / "attribution")
    captions.append(("attribution.png", "Agreement with the donor+adapter when only some of the adapter's layers are "
                                        "pasted (single layers, leave one out, cumulative): which layers carry it."))
    plt.close("all")
    lines = [f"# Faithfulness of `{t.choice}` (α = {t.alpha:.3g})", "",
             f"{len(prompts)} prompts; layer map {t.layer_map}.", ""]
    for image, caption in captions:
        lines += [f"![{caption}]({image})", "", f"*{caption}*", ""]
    best = attribution[(attribution.metric == "criterion")].sort_values("value", ascending=False).head(5)
    lines += ["Top layer subsets by agreement:", "", "| condition | layers | agreement |", "|---|---|---|"]
    lines += [f"| {r.condition} | {r.layers} | {r.value:.3f} |" for r in best.itertuples()]
    report = out / "report.md"
    atomic_write(report, lambda p: p.write_text("\n".join(lines) + "\n"))
    return files + [report]
