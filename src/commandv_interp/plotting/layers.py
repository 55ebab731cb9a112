"""Consumes the per-layer analysis tables (similarity, fidelity, attribution and null
baselines), produces figures over layers and layer pairs.

- :func:`plot_similarity`: the donor × recipient similarity matrix, annotated, with the chosen map boxed and a
  collapsed map flagged in the title;
- :func:`plot_fidelity`: per-layer fidelity, one panel per unit (cosines, norm ratios, R², errors);
- :func:`plot_attribution`: bars per pasted layer subset (and null baselines), rates on [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from commandv_interp.plotting.style import (RATE_METRICS, REFERENCES, _ci, _draw_references, _legend_handles, _plt,
                                            _rate_axis, _require, _unit, label)

def _collapse(chosen: pd.DataFrame) -> int | None:
    """The recipient layer every donor layer of the map lands on, or None."""
    targets = set(chosen.recipient_layer)
    return int(next(iter(targets))) if len(chosen) > 1 and len(targets) == 1 else None


def plot_similarity(frame: pd.DataFrame, title: str | None = None, ax=None,
                    other_map: Sequence[tuple[int, int]] | None = None, other_label: str = "relative-depth map"):
    """Annotated heatmap of ``similarity`` (rows donor layers, columns recipient layers) with the chosen pairs
    boxed in red; a map that sends every donor layer to one recipient layer is flagged as collapsed in the title.

    Args:
        frame: :func:`commandv_interp.analysis.similarity_frame` output.
        title: names the pair, e.g. ``"gpt2-4x96 → llama-6x128"``.
        other_map: ``(donor_layer, recipient_layer)`` pairs of another map to compare (dashed white boxes).
    """
    _require(frame, ["donor_layer", "recipient_layer", "similarity", "chosen"], "plot_similarity")
    plt = _plt()
    from matplotlib.patches import Rectangle

    grid = frame.pivot(index="donor_layer", columns="recipient_layer", values="similarity").sort_index()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(2.2 + 0.75 * grid.shape[1],
                                                                           1.6 + 0.6 * grid.shape[0]))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="upper")
    rows, cols = list(grid.index), list(grid.columns)
    lo, hi = np.nanmin(grid.values), np.nanmax(grid.values)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.values[i, j]
            dark = (v - lo) / (hi - lo + 1e-12) < 0.6
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small", color="white" if dark else "black")
    chosen = frame[frame.chosen]
    for d, r in zip(chosen.donor_layer, chosen.recipient_layer):
        ax.add_patch(Rectangle((cols.index(r) - 0.5, rows.index(d) - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5,
                               label="chosen map" if d == chosen.donor_layer.iloc[0] else None))
    for k, (d, r) in enumerate(p for p in (other_map or ()) if p[0] in rows and p[1] in cols):
        ax.add_patch(Rectangle((cols.index(r) - 0.38, rows.index(d) - 0.38), 0.76, 0.76, fill=False, ls="--",
                               edgecolor="white", lw=1.5, label=other_label if k == 0 else None))
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in cols])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in rows])
    metric = str(frame["metric"].iloc[0]) if "metric" in frame.columns else "similarity"
    fig.colorbar(image, ax=ax, label=label(metric))
    ax.set_xlabel("recipient layer")
    ax.set_ylabel("donor layer")
    heading = title or "layer similarity"
    collapsed = _collapse(chosen)
    if collapsed is not None:
        heading += f"\nmap collapsed: every donor layer → recipient layer {collapsed}"
    ax.set_title(heading, color="firebrick" if collapsed is not None else "black", fontsize="medium")
    legend = ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14 - 0.02 * (6 - min(6, grid.shape[0]))),
                       frameon=False, fontsize="small", ncol=2)
    for handle in legend.legend_handles:
        if handle.get_edgecolor()[:3] == (1.0, 1.0, 1.0):
            handle.set_edgecolor("0.3")  # a white box is invisible on the page
    return fig


def plot_fidelity(frame: pd.DataFrame, metrics: Sequence[str] | None = None, title: str | None = None, ax=None):
    """Per-layer fidelity as points over the mapped layer pairs (x ticks ``l_D→l_R``), one panel per unit
    (cosines, norm ratios on a log axis, R², CKA, errors) with the ideal value as a dotted line.

    Args:
        frame: a layer-pair table (``converter_fidelity``, ``state_delta_fidelity`` or ``downstream_fidelity``).
        metrics: which metrics to draw (default: all in ``frame``).
        ax: draw into this axes; then ``metrics`` must share one unit.
    """
    _require(frame, ["donor_layer", "recipient_layer", "metric", "value"], "plot_fidelity")
    plt = _plt()
    frame = frame.dropna(subset=["donor_layer", "recipient_layer"])
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(frame.metric))
    units: dict[tuple[str, float, str], list[str]] = {}
    for metric in metrics:
        units.setdefault(_unit(metric), []).append(metric)
    if ax is not None and len(units) > 1:
        raise ValueError(f"metrics {metrics} have {len(units)} units ({[u[0] for u in units]}); one axes holds one "
                         "unit: pass metrics of one unit, or no ax")
    n_pairs = len({(d, r) for d, r in zip(frame.donor_layer, frame.recipient_layer)})
    fig, axes = ((ax.figure, [ax]) if ax is not None else
                 plt.subplots(1, len(units), figsize=(len(units) * max(3.4, 0.7 * n_pairs + 1.8), 3.8), squeeze=False))
    for panel, ((unit, ideal, heading), group) in zip(np.ravel(axes), units.items()):
        sub = frame[frame.metric.isin(group)]
        pairs = sorted({(int(d), int(r)) for d, r in zip(sub.donor_layer, sub.recipient_layer)},
                       key=lambda p: (p[0], p[1]))
        width = 0.5 / max(1, len(group))
        for k, metric in enumerate(group):
            rows = sub[sub.metric == metric]
            values = {(int(d), int(r)): v for d, r, v in zip(rows.donor_layer, rows.recipient_layer, rows.value)}
            xs = [i for i, p in enumerate(pairs) if p in values]
            panel.plot(np.array(xs) + (k - (len(group) - 1) / 2) * width, [values[pairs[i]] for i in xs], "o",
                       ls="none", ms=6, label=label(metric), zorder=3)
        if np.isfinite(ideal):
            panel.axhline(ideal, color="gray", lw=0.8, ls=":", zorder=1)
            lo, hi = panel.get_ylim()
            pad = 0.04 * (max(hi, ideal) - min(lo, ideal))
            panel.set_ylim(min(lo, ideal - pad), max(hi, ideal + pad))  # the ideal stays in view
        if "ratio" in unit and (sub.value > 0).all() and sub.value.max() / max(sub.value.min(), 1e-12) > 10:
            panel.set_yscale("log")
        panel.set_xticks(range(len(pairs)), [f"{d}→{r}" for d, r in pairs])
        panel.set_xlim(-0.6, len(pairs) - 0.4)
        panel.set_xlabel("donor layer → recipient layer")
        panel.set_ylabel(unit)
        if len(units) > 1:
            panel.set_title(heading, fontsize="medium")
        panel.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize="small",
                     ncol=2 if len(group) > 2 else 1)
    if title:
        (fig.suptitle if len(units) > 1 else np.ravel(axes)[0].set_title)(title)
    fig.tight_layout()
    return fig


_MODES = {"all": "all layers", "single": "one layer", "leave_one_out": "all but one", "cumulative_first": "first k",
          "cumulative_last": "last k"}


def _bars(sub: pd.DataFrame, baselines: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """One row per bar: ``group`` (the attribution mode, or the null baselines), ``tick``, ``value``, CI, ``null``."""
    ci = _ci(sub)
    bars = pd.DataFrame({"group": [_MODES.get(c, label(c)) for c in sub.condition],
                         "tick": [str(layers).replace(",", ", ") for layers in sub.layers],
                         "value": sub.value.to_numpy(float), "low": ci[0] if ci else np.nan,
                         "high": ci[1] if ci else np.nan, "null": False})
    if baselines is not None:
        _require(baselines, ["condition", "metric", "value"], "plot_attribution baselines")
        nulls = baselines[(baselines.metric == metric) & ~baselines.condition.isin(["none", "paste"])]
        bars = pd.concat([bars, pd.DataFrame({"group": "null baselines", "value": nulls.value.to_numpy(float),
                                              "tick": [label(c).replace("other behavior:", "other: ")
                                                       for c in nulls.condition],
                                              "low": np.nan, "high": np.nan, "null": True})], ignore_index=True)
    return bars


def plot_attribution(frame: pd.DataFrame, metric: str = "logit_diff", baselines: pd.DataFrame | None = None,
                     references: pd.DataFrame | None = None, title: str | None = None, ax=None):
    """Bars of ``metric`` for each pasted layer subset, grouped by mode (all layers, one layer, all but one, first
    k, last k; ticks name the pasted donor layers) with 95% CI error bars where ``ci_low``/``ci_high`` are given,
    then the null baselines (gray, hatched); rates on a fixed [0, 1] axis with the reference rates as lines.

    Args:
        frame: :func:`commandv_interp.analysis.layer_attribution` output (``condition``), or study rows with a
            ``subset`` column (:func:`commandv_interp.analysis.study.run_study` with ``subsets``).
        baselines: :func:`commandv_interp.analysis.null_baselines` output (same metric), optional.
        references: :func:`reference_rates` rows; the recipient alone (``condition == "none"``) is one too.
    """
    if "condition" not in frame.columns and "subset" in frame.columns:
        frame = frame.rename(columns={"subset": "condition"})
    _require(frame, ["condition", "layers", "metric", "value"], "plot_attribution")
    plt = _plt()
    sub = frame[(frame.metric == metric) & (frame.condition != "none")]
    if sub.empty:
        raise ValueError(f"no rows with metric {metric!r}; available: {sorted(set(frame.metric))}")
    bars = _bars(sub, baselines, metric)
    groups = list(dict.fromkeys(bars.group))
    bars["x"] = np.arange(len(bars)) + 0.6 * np.array([groups.index(g) for g in bars.group])  # a gap per group
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(5.0, 0.55 * len(bars) + 2.5), 3.8))
    for row in bars.itertuples():
        err = None if np.isnan(row.low) else [[max(row.value - row.low, 0)], [max(row.high - row.value, 0)]]
        ax.bar(row.x, row.value, color="tab:gray" if row.null else "tab:blue", hatch="//" if row.null else "",
               edgecolor="black", lw=0.5, zorder=2, yerr=err, capsize=3)
    base = frame[(frame.metric == metric) & (frame.condition == "none")]
    if not base.empty:
        ax.axhline(float(base.value.iloc[0]), label="recipient base", zorder=3, **REFERENCES["recipient base"])
    if references is not None:
        refs = references[references.metric == metric]
        _draw_references(ax, refs[(refs.reference != "recipient base") | base.empty])
    if metric in RATE_METRICS:
        _rate_axis(ax)
    rotate = bars.tick.str.len().max() > 8
    ax.set_xticks(bars.x, bars.tick, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                  fontsize="small")
    for group in groups:
        xs = bars.x[bars.group == group]
        ax.annotate(group, ((xs.min() + xs.max()) / 2, 0), xycoords=("data", "axes fraction"),
                    xytext=(0, -34 if rotate else -24), textcoords="offset points", ha="center", va="top",
                    fontsize="small", fontweight="bold")
    ax.set_xlabel("pasted donor layers, by mode" + (" (gray: null baselines)" if baselines is not None else ""),
                  labelpad=26)
    ax.set_ylabel(label(metric).replace(" (", "\n(") if metric in RATE_METRICS else label(metric))
    ax.set_title(title or f"layer attribution: {label(metric)}", fontsize="medium")
    handles = _legend_handles([ax])
    if handles:
        ax.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                  fontsize="small")
    return fig
