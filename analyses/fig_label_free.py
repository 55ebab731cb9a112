"""Figure: the label-free transfer over seeds on every world: the share of (cell × seed) runs that meet the bar and
the median compute, per method, from the tables ``benchmarks/label_free.py --seeds 0-4`` wrote.

    python analyses/fig_label_free.py [--runs WORLD=CSV ...] [--out docs/figures]

Each ``--runs`` names a world and a ``label_free*.csv`` (default: the main and second zoo worlds and the generated
dev and test worlds of version 3, from docs/figures). Nothing is run: the figure reads the benchmark's tables.
Writes label_free_overview.{png,pdf,csv}.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import _figure

STEM = "label_free_overview"
METHODS = {"transfer": "cv.transfer (defaults)", "distill": "distillation from scratch",
           "paste": "Command-V paste alone (backprop-free)", "steering": "steering vector",
           "paper": "paper-exact Command-V"}
TEST_TARGET = 0.95  # the target share on the generated test worlds
COMPUTE_TARGET = 0.03  # the target median compute (a share of the finetune's FLOPs)


def tidy(runs: list[tuple[str, Path]]) -> pd.DataFrame:
    """Per world and method: runs, runs meeting the bar, their share, and the median FLOPs share (NaN: not
    counted, as for paper-exact)."""
    rows = []
    for world, path in runs:
        table = pd.read_csv(path)
        for method, label in METHODS.items():
            if f"{method}_meets_bar" not in table:
                continue
            met = table[f"{method}_meets_bar"].astype(bool)
            flops = table.get(f"{method}_flops_ratio", pd.Series(dtype=float)).dropna()
            rows.append({"world": world, "method": method, "label": label, "runs": len(table),
                         "runs_meeting_bar": int(met.sum()), "share_meeting_bar": float(met.mean()),
                         "median_flops_ratio": float(flops.median()) if len(flops) else float("nan"),
                         "table": path.name})
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame) -> plt.Figure:
    worlds = list(dict.fromkeys(frame.world))
    methods = [m for m in METHODS if m in set(frame.method)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    width = 0.8 / len(methods)
    colors = plt.get_cmap("tab10")
    x = np.arange(len(worlds))
    for k, method in enumerate(methods):
        rows = frame[frame.method == method].set_index("world").reindex(worlds)
        offset = (k - (len(methods) - 1) / 2) * width
        axes[0].bar(x + offset, rows.share_meeting_bar, width, color=colors(k), label=METHODS[method])
        axes[1].bar(x + offset, 100 * rows.median_flops_ratio, width, color=colors(k))
    axes[0].axhline(TEST_TARGET, color="k", ls="--", lw=1, label=f"target on the test worlds ({TEST_TARGET:.0%})")
    axes[1].axhline(100 * COMPUTE_TARGET, color="k", ls=":", lw=1, label="target median compute (3%)")
    axes[1].axhline(5, color="0.5", ls="-.", lw=1, label="the polish's default budget (5%)")
    axes[0].set_ylabel("share of (cell × seed) runs\nmeeting the bar")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("median FLOPs, % of the\nrecipient finetune's")
    for ax in axes:
        _figure.world_ticks(ax, worlds)
    handles, labels = axes[0].get_legend_handles_labels()
    h, lab = axes[1].get_legend_handles_labels()
    fig.legend(handles + h, labels + lab, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Label-free transfer over transfer seeds 0–4 (each world's cells × 5 seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.96))
    return fig


def main() -> None:
    started = time.perf_counter()
    args = _figure.label_free_runs(__doc__)
    frame = tidy(args.runs)
    share = frame.pivot_table(index="method", values="share_meeting_bar", aggfunc=["min", "max"]).droplevel(1, axis=1)
    compute = frame[frame.method == "transfer"].median_flops_ratio
    within = int((compute <= COMPUTE_TARGET).sum())
    caption = (f"cv.transfer meets the bar in {share.loc['transfer', 'min']:.0%}–{share.loc['transfer', 'max']:.0%} "
               f"of the runs of each world, the backprop-free paste in {share.loc['paste', 'min']:.0%}–"
               f"{share.loc['paste', 'max']:.0%}; its median compute is within the {COMPUTE_TARGET:.0%} target in "
               f"{within} of {len(compute)} worlds ({compute.min():.1%}–{compute.max():.1%}).")
    _figure.save(plot(frame), frame, args.out, STEM, caption, started)


if __name__ == "__main__":
    main()
