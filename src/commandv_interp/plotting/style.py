"""Consumes metric names and the zoo's behavior table, produces the look every figure shares:
human labels and units, the fixed [0, 1] rate axis, the reference rates and their line styles, the legend off the
data, CI columns read, and figures saved as PNG and PDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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


def _unit(metric: str) -> tuple[str, float, str]:
    for key, name, ref, heading in _UNITS:
        if key in metric:
            return name, ref, heading
    return "value", float("nan"), ""


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
