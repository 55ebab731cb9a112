"""Figure: where ``cv.transfer``'s compute goes, part by part (the setup, the paste search, the polish's training and
scoring, the scale search), on every world, from the tables ``benchmarks/label_free.py --seeds 0-4`` wrote (their
``transfer_compute_<part>`` columns: each part's FLOPs as a share of the recipient finetune's).

    python analyses/fig_compute.py [--runs WORLD=CSV ...] [--out docs/figures]

Each bar stacks the parts' means over the world's runs (means add up to the mean of the whole call; the CSV also has
each part's median and the whole call's median). Nothing is run. Writes compute_parts.{png,pdf,csv}.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import _figure
from commandv_interp.pipeline.compute import KEYS, PARTS

STEM = "compute_parts"
COMPUTE_TARGET = 0.03  # issue 27's target median compute (a share of the finetune's FLOPs)
POLISH_BUDGET = 0.05  # the polish's default budget (a share of the estimated finetune)


def tidy(runs: list[tuple[str, Path]]) -> pd.DataFrame:
    """Per world and part: runs, the part's mean and median share of the finetune's FLOPs, and the whole call's
    mean and median (the ``transfer_flops_ratio`` column)."""
    rows = []
    for world, path in runs:
        table = pd.read_csv(path)
        missing = [f"transfer_compute_{key}" for key in KEYS if f"transfer_compute_{key}" not in table]
        if missing:
            raise SystemExit(f"error: {path.name} lacks {missing[0]} (a table written before benchmarks/label_free.py "
                             "recorded the compute per part: run it again)")
        total = table["transfer_flops_ratio"]
        for key, part in zip(KEYS, PARTS):
            share = table[f"transfer_compute_{key}"]
            rows.append({"world": world, "part": part, "key": key, "runs": len(table), "mean": float(share.mean()),
                         "median": float(share.median()), "call_mean": float(total.mean()),
                         "call_median": float(total.median()), "table": path.name})
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame) -> plt.Figure:
    worlds = list(dict.fromkeys(frame.world))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    x, bottom = np.arange(len(worlds)), np.zeros(len(worlds))
    colors = plt.get_cmap("tab10")
    for k, (key, part) in enumerate(zip(KEYS, PARTS)):
        means = frame[frame.key == key].set_index("world").reindex(worlds)["mean"].to_numpy() * 100
        if not means.any():
            continue  # a part no run spent anything on (the surrogate, from ReFT donors)
        ax.bar(x, means, 0.6, bottom=bottom, color=colors(k), label=part)
        bottom += means
    medians = frame.drop_duplicates("world").set_index("world").reindex(worlds)["call_median"].to_numpy() * 100
    ax.scatter(x, medians, marker="D", color="k", zorder=3, label="median of the whole call")
    ax.axhline(100 * COMPUTE_TARGET, color="k", ls=":", lw=1, label="target median compute (3%)")
    ax.axhline(100 * POLISH_BUDGET, color="0.5", ls="-.", lw=1,
               label="the polish's default budget (5% of the estimate)")
    ax.set_ylabel("mean FLOPs per run, % of the\nrecipient finetune's")
    _figure.world_ticks(ax, worlds)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("Where cv.transfer's compute goes (defaults, transfer seeds 0–4)", fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    started = time.perf_counter()
    args = _figure.label_free_runs(__doc__)
    frame = tidy(args.runs)
    by_part = frame.groupby("key")["mean"].mean()
    share = by_part / by_part.sum()
    top = share.sort_values(ascending=False).index[:2]
    caption = (f"Over these worlds the {PARTS[KEYS.index(top[0])]} ({share[top[0]]:.0%}) and the "
               f"{PARTS[KEYS.index(top[1])]} ({share[top[1]]:.0%}) take most of the compute; the whole call's median "
               f"is {frame.call_median.min():.1%}–{frame.call_median.max():.1%} of the finetune's FLOPs.")
    _figure.save(plot(frame), frame, args.out, STEM, caption, started)


if __name__ == "__main__":
    main()
