"""Figure: per-layer attribution of one zoo transfer. The behavior's target rate and false refusal when only some
of the adapter's donor layers are pasted (all, each single layer, all but one, cumulative from the first or the
last layer), with bootstrap 95% CIs, on fixed [0, 1] axes with the reference rates as lines.

    python analyses/fig_attribution.py [--study examples/layer_attribution.toml] [--out docs/figures]

Writes layer_attribution.{png,pdf,csv}. Seeded; about a minute on 2 CPU cores (cached under results/).
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import pandas as pd

import _figure
from commandv_interp import plotting

STEM = "layer_attribution"
STUDY = "layer_attribution"  # examples/layer_attribution.toml


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    target, _ = _figure.rates(frame.behavior.iloc[0])
    t = _figure.at(frame, target)
    full = float(t[t.subset == "all"].value.iloc[0])
    singles = t[t.subset == "single"].sort_values("value")
    drops = t[t.subset == "leave_one_out"].sort_values("value")
    every = set(str(t[t.subset == "all"].layers.iloc[0]).split(","))
    missing = ",".join(sorted(every - set(str(drops.layers.iloc[0]).split(","))))
    return (f"Layer attribution ({frame.pair.iloc[0]}, {frame.behavior.iloc[0]}): all layers give {full:.2f} "
            f"{target}; the best single layer ({singles.layers.iloc[-1]}) alone gives {singles.value.iloc[-1]:.2f}; "
            f"without layer {missing} it falls to {drops.value.iloc[0]:.2f}.")


def main() -> None:
    started = time.perf_counter()
    args = _figure.parser(__doc__, STUDY).parse_args()
    study, frame = _figure.run(args)
    behavior, (donor, recipient) = study.behaviors[0], study.pairs[0]
    frame = frame[(frame.behavior == behavior) & (frame.donor == donor) & (frame.recipient == recipient)]
    every = frame[frame.subset == "all"].layers.iloc[0]
    frame = frame[~(frame.subset.str.startswith("cumulative") & (frame.layers == every))]  # = all layers
    refs = _figure.references(frame)
    metrics = _figure.rates(behavior)
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 4.4))
    for ax, metric in zip(axes, metrics):
        plotting.plot_attribution(frame, metric, references=refs, ax=ax, title=plotting.label(metric))
        if ax is not axes[-1]:
            ax.get_legend().remove()
    fig.suptitle(f"{donor} → {recipient}, {behavior}: which donor layers carry the paste "
                 f"({study.methods[0]} converters, {study.matches[0]} map, α = {study.alphas[0]:g})")
    fig.tight_layout()
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
