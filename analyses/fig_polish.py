"""Figure: what the polish of the label-free transfer does to the paste, per recipient layer and behavior, over
seeds: the direction (cosine) and size (norm ratio) of the polished delta against the compiled paste it started from
and against the distillation from scratch, and the agreement with the donor + adapter when one layer of the final
edit acts alone or is left out.

    python analyses/fig_polish.py [--results results/polish_change] [--out docs/figures]

Reads ``<results>/polish_change.csv`` from ``examples/polish_study.py`` (run first; it caches its cells) and writes
polish_change.{png,pdf,csv}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import _figure

STEM = "polish_change"
REFERENCES = {"paste": ("compiled paste it started from", "tab:blue", "o"),
              "scratch": ("distillation from scratch", "tab:orange", "s")}
MODES = {"single": ("this layer alone", "tab:green", "^"), "leave_one_out": ("all but this layer", "tab:red", "v")}
ROWS = (("delta_cosine", "cosine of the polished delta\nwith the reference's"),
        ("norm_ratio", "norm ratio, polished / reference\n(1 = same size)"),
        ("criterion", "agreement with donor + adapter"))


def _left_out(layers: str, every: set[int]) -> int:
    rest = {int(x) for x in str(layers).split(",") if x != ""}
    return min(every - rest)


def _change_panel(ax, rows: pd.DataFrame, metric: str, pos: dict[int, int]) -> None:
    for k, (ref, (name, color, marker)) in enumerate(REFERENCES.items()):
        sub = rows[(rows.reference == ref) & (rows.metric == metric)]
        x = np.array([pos[int(v)] for v in sub.recipient_layer], float) + (k - 0.5) * 0.25
        ax.scatter(x + 0.05 * (sub.seed.to_numpy() - 2), sub.value, color=color, marker=marker, label=name,
                   alpha=0.75, zorder=3)
    ax.axhline(1.0, color="0.5", ls=":", lw=1, zorder=1)


def _share_panel(ax, rows: pd.DataFrame, pos: dict[int, int]) -> None:
    crit = rows[rows.metric == "criterion"]
    for k, (mode, (name, color, marker)) in enumerate(MODES.items()):
        for seed, group in crit.groupby("seed"):
            every = {int(x) for x in str(group[group.condition == "all"].layers.iloc[0]).split(",")}
            sub = group[group.condition == mode]
            at = [int(v) if mode == "single" else _left_out(v, every) for v in sub.layers]
            x = np.array([pos[a] for a in at], float) + (k - 0.5) * 0.25 + 0.05 * (seed - 2)
            ax.scatter(x, sub.value, color=color, marker=marker, label=name, alpha=0.75, zorder=3)
    whole = crit[crit.condition == "all"].value
    ax.axhspan(whole.min(), whole.max(), color="0.85", zorder=0, label="final edit, all layers (range over seeds)")
    ax.set_ylim(-0.04, 1.04)


def figure(frame: pd.DataFrame):
    behaviors = list(dict.fromkeys(frame.behavior))
    layers = sorted(set(int(v) for v in frame.recipient_layer.dropna()) | {
        int(x) for v in frame.layers.dropna() for x in str(v).split(",") if x != ""})
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, axes = plt.subplots(len(ROWS), len(behaviors), figsize=(4.2 * len(behaviors), 9.5), squeeze=False,
                             sharex=True)
    for j, behavior in enumerate(behaviors):
        sub = frame[frame.behavior == behavior]
        change = sub[(sub.analysis == "change") & (sub.edit == "polished")]
        _change_panel(axes[0, j], change, "delta_cosine", pos)
        _change_panel(axes[1, j], change, "norm_ratio", pos)
        _share_panel(axes[2, j], sub[sub.analysis == "attribution"], pos)
        axes[0, j].set_title(f"{behavior} ({len(sub.seed.unique())} seeds)\n{_outcomes(sub)}", fontsize="medium")
        axes[0, j].set_ylim(-1.05, 1.05)
        axes[1, j].set_yscale("log")
        axes[1, j].yaxis.set_major_locator(plt.FixedLocator([0.25, 0.5, 1, 2, 5, 10, 20, 50]))
        axes[1, j].yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[1, j].yaxis.set_minor_formatter(plt.NullFormatter())
        if change.empty:  # no seed polished a paste: nothing to compare
            for ax in axes[:2, j]:
                ax.text(0.5, 0.5, "no polish ran on a paste\n(see the outcomes above)", transform=ax.transAxes,
                        ha="center", va="center", color="0.4")
        axes[-1, j].set_xticks(range(len(layers)), [str(layer) for layer in layers])
        axes[-1, j].set_xlabel("recipient layer")
    for i, (_, ylabel) in enumerate(ROWS):
        axes[i, 0].set_ylabel(ylabel)
    handles = {}
    for ax in axes.ravel():
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, frameon=False, fontsize="small",
               bbox_to_anchor=(0.5, -0.04))
    pair = f"{frame.donor.iloc[0]} → {frame.recipient.iloc[0]}"
    fig.suptitle(f"{pair}: what the polish did to the paste, per recipient layer ({frame.seed.nunique()} seeds)")
    fig.tight_layout()
    return fig


def _outcomes(sub: pd.DataFrame) -> str:
    """How many seeds ended in each kind of edit: a paste as it is, a polished paste, distillation only."""
    labels = sub.drop_duplicates("seed").label
    only = int(labels.str.startswith("distillation only").sum())
    polished = int(labels.str.contains("distillation steps").sum())
    return f"paste as is {len(labels) - only - polished}, paste + polish {polished}, distillation only {only}"


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    parts = []
    for behavior, sub in frame.groupby("behavior", sort=False):
        change = sub[(sub.analysis == "change") & (sub.edit == "polished") & (sub.reference == "paste")]
        if change.empty:
            parts.append(f"{behavior}: no polished paste ({_outcomes(sub)})")
            continue
        cos = change[change.metric == "delta_cosine"].value
        ratio = change[change.metric == "norm_ratio"].value
        parts.append(f"{behavior}: cosine with the paste {cos.median():.2f} (median over layers and seeds; lowest "
                     f"{cos.min():.2f}), norm ratio {ratio.median():.2f} ({ratio.min():.2f}–{ratio.max():.2f}) "
                     f"[{_outcomes(sub)}]")
    return "What the polish kept of the paste — " + "; ".join(parts) + "."


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=_figure.ROOT / "results" / "polish_change",
                        help="folder of examples/polish_study.py")
    parser.add_argument("--out", type=Path, default=_figure.FIGURES, help="folder for the PNG, PDF and CSV")
    args = parser.parse_args()
    source = args.results / "polish_change.csv"
    if not source.exists():
        raise SystemExit(f"{source} not found: run `python examples/polish_study.py --out {args.results}` first")
    frame = pd.read_csv(source, dtype={"layers": str})
    _figure.save(figure(frame), frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
