"""Consumes study rows (:func:`commandv_interp.analysis.study.run_study`) and reference rates,
produces figures of rates against a setting: one row of panels per metric, one column per panel value, rates on a
fixed [0, 1] axis with the reference rates as horizontal lines.

- :func:`plot_dose_response`: against a numeric setting (α, profile size N), lines with bootstrap CI bands;
- :func:`plot_comparison`: against a categorical setting (converter method, layer map), points with CIs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from commandv_interp.plotting.style import (_LABELS, RATE_METRICS, _ci, _draw_references, _legend_outside, _plt,
                                            _rate_axis, _require, label)

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
