"""Consumes the frames of :mod:`commandv_interp.analysis.polish_change` (what the polish changed, per recipient
layer, and the attribution of the final edit), produces one figure: did the polish keep the paste or overwrite it?

Panels over the recipient layers: the cosine of the polished adapter's delta with the paste's (and with the
distillation from scratch's), the norm ratio of the same pairs (log axis, 1 = same size), each edit's delta norm
against the residual stream, and the agreement with the donor + adapter when only one layer of the final edit acts,
or all but one. Several transfers (seeds,
behaviors) are drawn as points side by side, never joined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from commandv_interp.plotting.style import _legend_outside, _plt, _require

__all__ = ["plot_polish_change"]

_REFERENCES = {"paste": ("compiled paste (before any polish)", "tab:blue", "o"),
               "scratch": ("distillation from scratch", "tab:orange", "s")}
_EDITS = {"polished": ("polished adapter (the final edit)", "tab:purple", "P"),
          "paste": _REFERENCES["paste"],
          "scratch": ("distillation from scratch", "tab:orange", "s")}
_MODES = {"all": ("all layers", "black", "D"), "single": ("this layer alone", "tab:green", "^"),
          "leave_one_out": ("all but this layer", "tab:red", "v")}


def plot_polish_change(change: pd.DataFrame, attribution: pd.DataFrame | None = None, title: str | None = None):
    """The polish change per recipient layer (and the final edit's attribution, if given) as one figure: the
    direction and size of the polished delta against the paste's and the scratch adapter's (when ``change`` has
    them), each edit's push against the residual, and the share of the behavior per layer.

    Args:
        change: :func:`~commandv_interp.analysis.polish_change` (or ``edit_norms``) rows; transfers may be stacked.
        attribution: :func:`~commandv_interp.analysis.edit_attribution` rows (``criterion``), optional.
        title: e.g. ``"llama-6x128 → gpt2-4x96, jailbreak"``.
    """
    _require(change, ["recipient_layer", "edit", "reference", "metric", "value"], "plot_polish_change")
    plt = _plt()
    compared = change[(change.edit == "polished") & change.reference.isin(list(_REFERENCES))]
    panels = (["direction", "size"] if not compared.empty else []) + ["residual"]
    panels += ["attribution"] if attribution is not None else []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), squeeze=False)
    layers = sorted(set(int(x) for x in change.recipient_layer))
    pos = {layer: i for i, layer in enumerate(layers)}
    for ax, panel in zip(axes[0], panels):
        if panel == "attribution":
            _attribution_panel(ax, attribution, pos)
            continue
        if panel == "residual":
            _series(ax, change[change.reference == "residual"], "edit", _EDITS, pos)
            ax.set_ylabel("edit delta norm / residual norm")
            ax.set_title("push against the residual stream")
            ax.set_ylim(bottom=0)
        else:
            metric = "delta_cosine" if panel == "direction" else "norm_ratio"
            _series(ax, compared[compared.metric == metric], "reference", _REFERENCES, pos)
            ax.axhline(1.0, color="0.5", ls=":", lw=1, zorder=1)
            if panel == "direction":
                ax.set_ylim(-1.05, 1.05)
                ax.set_ylabel("cosine of the polished delta\nwith the reference delta")
            else:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(_plain_numbers())
                ax.yaxis.set_minor_formatter(_plain_numbers())
                ax.set_ylabel("norm ratio, polished / reference\n(1 = same size)")
            ax.set_title(panel)
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_xlabel("recipient layer")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _legend_outside(fig, axes)
    return fig


def _plain_numbers():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def _series(ax, rows: pd.DataFrame, column: str, styles: dict, pos: dict[int, int]) -> None:
    """Points per recipient layer, one series per value of ``column``, side by side."""
    present = [key for key in styles if (rows[column] == key).any()]
    for k, key in enumerate(present):
        name, color, marker = styles[key]
        sub = rows[rows[column] == key]
        x = np.array([pos[int(v)] for v in sub.recipient_layer], float) + (k - (len(present) - 1) / 2) * 0.2
        ax.scatter(x, sub.value.to_numpy(float), color=color, marker=marker, label=name, zorder=3, alpha=0.8)


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
    ax.set_xlim(-0.5, len(pos) - 0.5)
    ax.set_xlabel("recipient layer")
    ax.set_ylabel("agreement with donor + adapter")
    ax.set_ylim(-0.04, 1.04)
    ax.set_title("share of the behavior")
