"""Stage 8 (plotting): consumes the analysis DataFrames (never models), produces matplotlib figures saved as PNG
and PDF.

- :func:`plot_similarity`: the donor × recipient similarity matrix with the chosen layer map drawn on it;
- :func:`plot_fidelity`: per-layer fidelity curves, one line per metric, x = the mapped layer pair;
- :func:`plot_attribution`: bars per pasted layer subset beside the null baselines, for one metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["plot_similarity", "plot_fidelity", "plot_attribution", "save_figure"]


def _plt():
    import matplotlib.pyplot as plt  # lazily: importing the package must not pick a backend

    return plt


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing}. Pass the DataFrame returned by "
                         "the matching commandv_interp.analysis function")
    if frame.empty:
        raise ValueError(f"{what} got an empty DataFrame")


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def plot_similarity(frame: pd.DataFrame, title: str | None = None, ax=None):
    """Heatmap of ``similarity`` (rows donor layers, columns recipient layers) with the chosen pairs marked.

    Args:
        frame: :func:`commandv_interp.analysis.similarity_frame` output.
    """
    _require(frame, ["donor_layer", "recipient_layer", "similarity", "chosen"], "plot_similarity")
    plt = _plt()
    grid = frame.pivot(index="donor_layer", columns="recipient_layer", values="similarity").sort_index()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(1.2 + 0.6 * grid.shape[1],
                                                                           1.0 + 0.5 * grid.shape[0]))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="upper")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    rows, cols = list(grid.index), list(grid.columns)
    chosen = frame[frame.chosen]
    ax.plot([cols.index(r) for r in chosen.recipient_layer], [rows.index(d) for d in chosen.donor_layer], "o-",
            color="white", markeredgecolor="black", label="chosen map")
    metric = frame["metric"].iloc[0] if "metric" in frame.columns else "similarity"
    fig.colorbar(image, ax=ax, label=str(metric))
    ax.set_xlabel("recipient layer")
    ax.set_ylabel("donor layer")
    ax.set_title(title or "layer similarity and chosen map")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_fidelity(frame: pd.DataFrame, metrics: Sequence[str] | None = None, title: str | None = None, ax=None):
    """One line per metric over the mapped layer pairs (x tick ``l_D→l_R``), with reference lines at 0 and 1.

    Args:
        frame: a layer-pair table (``converter_fidelity``, ``state_delta_fidelity`` or ``downstream_fidelity``).
        metrics: which metrics to draw (default: all in ``frame``).
    """
    _require(frame, ["donor_layer", "recipient_layer", "metric", "value"], "plot_fidelity")
    plt = _plt()
    frame = frame.dropna(subset=["donor_layer", "recipient_layer"])
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(frame.metric))
    pairs = sorted({(int(d), int(r)) for d, r in zip(frame.donor_layer, frame.recipient_layer)},
                   key=lambda p: (p[1], p[0]))
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(4.0, 0.9 * len(pairs) + 2), 3.4))
    for metric in metrics:
        sub = frame[frame.metric == metric]
        values = {(int(d), int(r)): v for d, r, v in zip(sub.donor_layer, sub.recipient_layer, sub.value)}
        xs = [i for i, p in enumerate(pairs) if p in values]
        ax.plot(xs, [values[pairs[i]] for i in xs], "o-", label=metric)
    for ref in (0.0, 1.0):
        ax.axhline(ref, color="gray", lw=0.6, ls=":")
    ax.set_xticks(range(len(pairs)), [f"{d}→{r}" for d, r in pairs])
    ax.set_xlabel("donor layer → recipient layer")
    ax.set_ylabel("value")
    ax.set_title(title or "per-layer fidelity")
    ax.legend(fontsize="small", loc="best")
    return fig


def plot_attribution(frame: pd.DataFrame, metric: str = "logit_diff", baselines: pd.DataFrame | None = None,
                     title: str | None = None, ax=None):
    """Bars of ``metric`` for each pasted layer subset, then the null baselines (hatched), with the recipient
    alone (``none``) as a dashed line.

    Args:
        frame: :func:`commandv_interp.analysis.layer_attribution` output.
        baselines: :func:`commandv_interp.analysis.null_baselines` output (same metric), optional.
    """
    _require(frame, ["condition", "layers", "metric", "value"], "plot_attribution")
    plt = _plt()
    sub = frame[(frame.metric == metric) & (frame.condition != "none")]
    if sub.empty:
        raise ValueError(f"no rows with metric {metric!r}; available: {sorted(set(frame.metric))}")
    labels = [f"{c}\n[{layers}]" for c, layers in zip(sub.condition, sub.layers)]
    values, hatches = list(sub.value), [""] * len(sub)
    if baselines is not None:
        _require(baselines, ["condition", "metric", "value"], "plot_attribution baselines")
        nulls = baselines[(baselines.metric == metric) & ~baselines.condition.isin(["none", "paste"])]
        labels += list(nulls.condition)
        values += list(nulls.value)
        hatches += ["//"] * len(nulls)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(5.0, 0.55 * len(values) + 1.5), 3.6))
    colors = ["tab:blue" if not h else "tab:gray" for h in hatches]
    for i, (value, hatch, color) in enumerate(zip(values, hatches, colors)):
        ax.bar(i, value, color=color, hatch=hatch, edgecolor="black", lw=0.5)
    base = frame[(frame.metric == metric) & (frame.condition == "none")]
    if not base.empty:
        ax.axhline(float(base.value.iloc[0]), color="black", ls="--", lw=1, label="recipient alone")
        ax.legend(fontsize="small")
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize="x-small")
    ax.set_xlabel("pasted donor layers (blue) and null baselines (gray)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"causal layer attribution ({metric})")
    return fig
