"""Stage 8 (plotting): consumes the analysis DataFrames (never models), produces matplotlib figures saved as PNG
and PDF.

Every figure puts one quantity on each axis with a human label, keeps its legend off the data (beside or below
the panels), draws rates on a fixed [0, 1] axis with the reference rates (recipient base, donor + adapter,
recipient finetune) as horizontal lines, and shows categorical axes as points or bars, never joined by lines.

- :func:`plot_dose_response`: rates against a numeric setting (α, profile size N) with bootstrap CI bands;
- :func:`plot_comparison`: rates against a categorical setting (converter method, layer map) as points with CIs;
- :func:`plot_similarity`: the donor × recipient similarity matrix, annotated, with the chosen map boxed and a
  collapsed map flagged in the title;
- :func:`plot_fidelity`: per-layer fidelity, one panel per unit (cosines, norm ratios, R², errors);
- :func:`plot_attribution`: bars per pasted layer subset (and null baselines), rates on [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_dose_response", "plot_comparison", "plot_similarity", "plot_fidelity", "plot_attribution",
           "reference_rates", "save_figure", "label", "RATE_METRICS", "REFERENCES"]

RATE_METRICS = frozenset({"refusal", "compliance", "false_refusal", "benign_compliance", "cot_format", "accuracy",
                          "behavior"})
"""Metrics that are rates: always drawn on a fixed [0, 1] axis."""

RATE_MARGIN = 0.04  # rate axes span [-0.04, 1.04]: lines at exactly 0 or 1 would hide under the frame

REFERENCES = {"recipient base": dict(color="0.45", ls=":", lw=1.4),
              "donor + adapter": dict(color="black", ls="--", lw=1.2),
              "recipient finetune": dict(color="darkgoldenrod", ls="-.", lw=1.2)}
"""The reference rates :func:`reference_rates` returns, with the line style each is drawn in (colors outside
matplotlib's default cycle, so that no reference line looks like a data series)."""

_LABELS = {
    "refusal": "refusal rate (harmful prompts)", "compliance": "compliance rate (harmful prompts)",
    "false_refusal": "false refusal rate (benign prompts)", "benign_compliance": "compliance rate (benign prompts)",
    "cot_format": "chain-of-thought format rate", "accuracy": "answer accuracy", "behavior": "behavior rate",
    "logit_diff": "logit difference (behavior − opposite word)", "criterion": "agreement with donor + adapter",
    "alpha_used": "paste scale α", "alpha": "paste scale α", "profile_size": "profile prompts N",
    "method": "converter method", "match": "layer map", "profile_set": "profile prompt set",
    "subset": "pasted donor layers", "pair": "donor → recipient", "positions": "pasted positions",
    "state_cosine": "state", "delta_cosine": "delta", "backward_cosine": "delta after round trip",
    "effect_cosine": "downstream effect", "contrast_cosine": "contrast", "delta_norm_ratio": "delta",
    "backward_norm_ratio": "delta after round trip", "effect_norm_ratio": "downstream effect",
    "contrast_ratio": "contrast", "mean_delta_ratio": "mean delta", "state_r2": "state",
    "pasted_to_residual_norm": "pasted delta / residual",
    "heldout_r2_to_donor": "recipient → donor converter", "heldout_r2_to_recipient": "donor → recipient converter",
    "round_trip_error_recipient": "round trip (recipient)", "round_trip_error_donor": "round trip (donor)",
    "pinv": "pseudo-\ninverse", "procrustes": "Procrustes", "transfer": "label-free\ntransfer",
    "interface-chained": "interface\n(chained)", "depth": "relative depth", "similarity": "CKA similarity",
    "cka": "linear CKA", "debiased_cka": "debiased linear CKA", "r2": "R²", "mutual_knn": "mutual k-NN overlap",
}

_UNITS = (("cosine", "cosine\n(1 = same direction)", 1.0, "direction"),
          ("pasted_to_residual", "pasted delta norm\n/ residual norm", float("nan"), "size against the stream"),
          ("ratio", "norm ratio, pasted / donor\n(1 = same size)", 1.0, "size"),
          ("r2", "held-out R²\n(1 = exact)", 1.0, "converter fit"),
          ("cka", "linear CKA\n(1 = same geometry)", 1.0, "representational similarity"),
          ("error", "relative error\n(0 = exact)", 0.0, "round trip"))
"""Fidelity units: (metric name contains, axis label, ideal value, panel title)."""


def label(name: str) -> str:
    """The human label of a metric or column name (``false_refusal`` → ``false refusal rate (benign prompts)``)."""
    return _LABELS.get(name, str(name).replace("_", " "))


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


def reference_rates(behavior_table: pd.DataFrame, donor: str, recipient: str, behavior: str) -> pd.DataFrame:
    """The reference rates of one transfer from the zoo's behavior table (``zoo.manifest()["behavior_table"]``).

    Returns:
        Rows ``metric, reference, value`` with ``reference`` one of :data:`REFERENCES`: the recipient without the
        adapter, the donor with its adapter, the recipient with its own adapter trained directly (finetune).
    """
    _require(behavior_table, ["model", "behavior", "condition", "metric", "value"], "reference_rates")
    rows = []
    for reference, model, condition in (("recipient base", recipient, "base"), ("donor + adapter", donor, "adapter"),
                                        ("recipient finetune", recipient, "adapter")):
        sub = behavior_table[(behavior_table.model == model) & (behavior_table.behavior == behavior)
                             & (behavior_table.condition == condition)]
        rows += [{"metric": m, "reference": reference, "value": float(v)} for m, v in zip(sub.metric, sub.value)]
    return pd.DataFrame(rows, columns=["metric", "reference", "value"])


def _grid(frame: pd.DataFrame, metrics: Sequence[str], panel: str | None, x: str, what: str, width: float = 3.6):
    _require(frame, [x, "metric", "value"] + ([panel] if panel else []), what)
    missing = [m for m in metrics if m not in set(frame.metric)]
    if missing:
        raise ValueError(f"{what}: no rows with metrics {missing}; available: {sorted(set(frame.metric))}")
    panels = list(dict.fromkeys(frame[panel])) if panel else [None]
    fig, axes = _plt().subplots(len(metrics), len(panels), figsize=(0.6 + width * len(panels), 0.4 + 2.7 * len(metrics)),
                                squeeze=False, sharex=True)
    return fig, axes, panels


def _finish_rates(fig, axes, frame, metrics, panel, panels, x, references, title) -> None:
    for row, metric in enumerate(metrics):
        for col, value in enumerate(panels):
            ax = axes[row][col]
            if references is not None:
                refs = references[references.metric == metric]
                if panel and panel in refs.columns:
                    refs = refs[refs[panel] == value]
                _draw_references(ax, refs)
            if metric in RATE_METRICS:
                _rate_axis(ax)
            ax.grid(axis="y", color="0.92", lw=0.6)
            ax.set_ylabel(label(metric).replace(" (", "\n(") if col == 0 else "")
            if row == 0 and value is not None:
                ax.set_title(str(value), fontsize="medium")
            if row == len(metrics) - 1:
                ax.set_xlabel(label(x))
    _legend_outside(fig, axes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()


def _rate_axis(ax) -> None:
    """The fixed rate axis: ticks 0 … 1, a small margin so that points and reference lines at 0 or 1 stay visible."""
    ax.set_ylim(-RATE_MARGIN, 1.0 + RATE_MARGIN)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])


def _draw_references(ax, refs: pd.DataFrame) -> None:
    """Horizontal reference lines; references at the same rate alternate their dashes along one line, so that
    each stays visible."""
    groups: list[tuple[float, list[str]]] = []
    for ref, value in zip(refs.reference, refs.value):
        for known, names in groups:
            if abs(known - value) < 0.005:
                names.append(ref)
                break
        else:
            groups.append((float(value), [ref]))
    for value, names in groups:
        for i, name in enumerate(names):
            style = dict(REFERENCES.get(name, dict(color="0.6", ls=":")))
            if len(names) > 1:  # dash i of every len(names): the coincident lines interleave
                style["ls"] = (4 * i, (4, 4 * (len(names) - 1)))
            ax.axhline(value, label=name, zorder=1, **style)


def _legend_handles(axes) -> dict[str, object]:
    """One handle per label over ``axes``; the reference lines by their canonical style."""
    from matplotlib.lines import Line2D

    handles: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, Line2D([], [], **REFERENCES[name]) if name in REFERENCES else handle)
    return dict(sorted(handles.items(), key=lambda item: item[0] in REFERENCES))  # the data first


def _legend_outside(fig, axes) -> None:
    handles = _legend_handles(np.ravel(axes))
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False, fontsize="small")


def _ci(sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    if {"ci_low", "ci_high"} <= set(sub.columns) and sub[["ci_low", "ci_high"]].notna().all().all():
        return sub.ci_low.to_numpy(float), sub.ci_high.to_numpy(float)
    return None


def plot_dose_response(frame: pd.DataFrame, metrics: Sequence[str], x: str = "alpha_used", panel: str | None = None,
                       hue: str | None = None, references: pd.DataFrame | None = None, title: str | None = None,
                       logx: bool = False):
    """Rates against a numeric setting: one row of panels per metric, one column per value of ``panel``, one line
    (with a shaded 95% CI band from ``ci_low``/``ci_high``) per value of ``hue``.

    Args:
        frame: :func:`commandv_interp.analysis.study.run_study` rows (``x``, ``metric``, ``value``, CIs).
        metrics: the metrics to draw, one row each (rates get a fixed [0, 1] axis).
        references: :func:`reference_rates` rows (``metric, reference, value``; with a ``panel`` column, per panel).
        logx: a log2 x axis (for sizes that double).
    """
    fig, axes, panels = _grid(frame, metrics, panel, x, "plot_dose_response")
    for row, metric in enumerate(metrics):
        for col, value in enumerate(panels):
            ax, sub = axes[row][col], frame[(frame.metric == metric) & ((frame[panel] == value) if panel else True)]
            for name, group in (sub.groupby(hue, sort=False) if hue else [(None, sub)]):
                group = group.sort_values(x)
                xs = group[x].to_numpy(float)
                line, = ax.plot(xs, group.value, "o-", ms=4, clip_on=False, zorder=3,
                                label=str(name) if hue else "Command-V paste", color=None if hue else "tab:blue")
                ci = _ci(group)
                if ci is not None:
                    ax.fill_between(xs, *ci, color=line.get_color(), alpha=0.2, lw=0, label="95% bootstrap CI"
                                    if not hue else None)
            if logx:
                ax.set_xscale("log", base=2)
                ticks = sorted(set(frame[x].astype(float)))
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    _finish_rates(fig, axes, frame, metrics, panel, panels, x, references, title)
    return fig


def plot_comparison(frame: pd.DataFrame, metrics: Sequence[str], x: str = "method", panel: str | None = None,
                    hue: str | None = None, references: pd.DataFrame | None = None, title: str | None = None,
                    order: Sequence[str] | None = None):
    """Rates against a categorical setting: points with 95% CI error bars (dodged per ``hue``), never lines; one
    row of panels per metric, one column per value of ``panel``.

    Args:
        frame: :func:`commandv_interp.analysis.study.run_study` rows.
        order: the categories of ``x`` in drawing order (default: as they first appear).
        references: as for :func:`plot_dose_response`.
    """
    cats = list(order) if order is not None else list(dict.fromkeys(frame[x].astype(str)))
    fig, axes, panels = _grid(frame, metrics, panel, x, "plot_comparison", width=max(3.6, 0.8 * len(cats) + 0.8))
    hues = list(dict.fromkeys(frame[hue])) if hue else [None]
    width = 0.6 / max(1, len(hues))
    for row, metric in enumerate(metrics):
        for col, value in enumerate(panels):
            ax, sub = axes[row][col], frame[(frame.metric == metric) & ((frame[panel] == value) if panel else True)]
            for k, name in enumerate(hues):
                group = sub[sub[hue] == name] if hue else sub
                group = group[group[x].astype(str).isin(cats)]
                xs = np.array([cats.index(c) for c in group[x].astype(str)]) + (k - (len(hues) - 1) / 2) * width
                ci = _ci(group)
                err = None if ci is None else np.vstack([group.value - ci[0], ci[1] - group.value]).clip(min=0)
                ax.errorbar(xs, group.value, yerr=err, fmt="o", ms=6, capsize=3, clip_on=False, zorder=3,
                            label=str(name) if hue else "Command-V paste (95% CI)")
            ax.set_xticks(range(len(cats)), [label(c) if c in _LABELS else c for c in cats])
            ax.set_xlim(-0.6, len(cats) - 0.4)
    _finish_rates(fig, axes, frame, metrics, panel, panels, x, references, title)
    return fig


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


def _unit(metric: str) -> tuple[str, float, str]:
    for key, name, ref, heading in _UNITS:
        if key in metric:
            return name, ref, heading
    return "value", float("nan"), ""


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
