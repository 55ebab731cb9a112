"""Consumes the frames of :mod:`commandv_interp.analysis.polish_change` (what the polish changed, per recipient
layer, and the attribution of the final edit), produces one figure: did the polish keep the paste or overwrite it?

Three panels over the recipient layers: the cosine of the polished adapter's delta with the paste's (and with the
distillation from scratch's), the norm ratio of the same pairs (log axis, 1 = same size), and the agreement with
the donor + adapter when only one layer of the final edit acts, or all but one. Several transfers (seeds,
behaviors) are drawn as points side by side, never joined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from commandv_interp.plotting.style import _legend_outside, _plt, _require

__all__ = ["plot_polish_change"]

_REFERENCES = {"paste": ("the paste it started from", "tab:blue", "o"),
               "scratch": ("distillation from scratch", "tab:orange", "s")}
_MODES = {"all": ("all layers", "black", "D"), "single": ("this layer alone", "tab:green", "^"),
          "leave_one_out": ("all but this layer", "tab:red", "v")}


def plot_polish_change(change: pd.DataFrame, attribution: pd.DataFrame | None = None, title: str | None = None):
    """The polish change per recipient layer (and the final edit's attribution, if given) as one figure.

    Args:
        change: :func:`~commandv_interp.analysis.polish_change` rows (several transfers may be stacked).
        attribution: :func:`~commandv_interp.analysis.edit_attribution` rows (``criterion``), optional.
        title: e.g. ``"llama-6x128 → gpt2-4x96, jailbreak"``.
    """
    _require(change, ["recipient_layer", "edit", "reference", "metric", "value"], "plot_polish_change")
    plt = _plt()
    n = 3 if attribution is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 3.8))
    layers = sorted(set(int(x) for x in change.recipient_layer))
    pos = {layer: i for i, layer in enumerate(layers)}
    compared = change[(change.edit == "polished") & change.reference.isin(list(_REFERENCES))]
    for ax, metric, ylabel in ((axes[0], "delta_cosine", "cosine of the polished delta\nwith the reference delta"),
                               (axes[1], "norm_ratio", "norm ratio, polished / reference\n(1 = same size)")):
        for k, (ref, (name, color, marker)) in enumerate(_REFERENCES.items()):
            sub = compared[(compared.reference == ref) & (compared.metric == metric)]
            if sub.empty:
                continue
            x = np.array([pos[int(v)] for v in sub.recipient_layer], float)
            ax.scatter(x + (k - 0.5) * 0.2, sub.value.to_numpy(float), color=color, marker=marker, label=name,
                       zorder=3, alpha=0.8)
        ax.axhline(1.0, color="0.5", ls=":", lw=1, zorder=1)
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("recipient layer")
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].set_title("direction")
    axes[1].set_yscale("log")
    axes[1].set_title("size")
    if attribution is not None:
        _attribution_panel(axes[2], attribution, pos)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _legend_outside(fig, axes)
    return fig


def _attribution_panel(ax, attribution: pd.DataFrame, pos: dict[int, int]) -> None:
    _require(attribution, ["condition", "layers", "metric", "value"], "plot_polish_change attribution")
    rows = attribution[attribution.metric == "criterion"]
    for k, (mode, (name, color, marker)) in enumerate(_MODES.items()):
        sub = rows[rows.condition == mode]
        if sub.empty:
            continue
        if mode == "all":
            ax.axhline(float(sub.value.mean()), color=color, ls="--", lw=1.2, label="final edit, all layers")
            continue
        every = {int(v) for v in str(rows[rows.condition == "all"].layers.iloc[0]).split(",")} if (
            rows.condition == "all").any() else set(pos)
        # a single layer is named by its layer; leave-one-out by the layer it leaves out
        at = [int(str(v)) if mode == "single" else min(every - {int(x) for x in str(v).split(",") if x})
              for v in sub.layers]
        x = np.array([pos.get(layer, np.nan) for layer in at], float)
        ax.scatter(x + (k - 1.5) * 0.2, sub.value.to_numpy(float), color=color, marker=marker, label=name, zorder=3,
                   alpha=0.8)
    none = rows[rows.condition == "none"]
    if not none.empty:
        ax.axhline(float(none.value.mean()), color="0.45", ls=":", lw=1.4, label="recipient alone")
    ax.set_xticks(range(len(pos)), [str(layer) for layer in pos])
    ax.set_xlabel("recipient layer")
    ax.set_ylabel("agreement with donor + adapter")
    ax.set_ylim(-0.04, 1.04)
    ax.set_title("share of the behavior")
