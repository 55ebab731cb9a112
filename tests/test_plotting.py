"""Plotting: figures a reader can read. One quantity per axis with a human label, rates on a fixed [0, 1] axis with
the reference rates drawn, categorical axes as points (never lines), legends off the data, heatmaps annotated with
the chosen map boxed and a collapse flagged; figures saved as PNG and PDF. Synthetic DataFrames only (fast)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from commandv_interp import plotting  # noqa: E402

PAIRS = ["a → b", "b → a"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _study(x: str, values, metrics=("refusal", "false_refusal")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for pair in PAIRS:
        for v in values:
            for metric in metrics:
                value = float(rng.uniform(0.1, 0.9))
                rows.append({"pair": pair, x: v, "metric": metric, "value": value, "ci_low": value - 0.05,
                             "ci_high": value + 0.05, "behavior": "refusal"})
    return pd.DataFrame(rows)


def _references() -> pd.DataFrame:
    table = pd.DataFrame([{"model": m, "behavior": "refusal", "condition": c, "metric": metric, "value": v}
                          for m in ("a", "b") for c, v in (("base", 0.0), ("adapter", 0.95))
                          for metric in ("refusal", "false_refusal")])
    return pd.concat([plotting.reference_rates(table, d, r, "refusal").assign(pair=f"{d} → {r}")
                      for d, r in (("a", "b"), ("b", "a"))], ignore_index=True)


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _assert_legends_off_the_data(fig) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the figure has no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend covers axes {ax.get_label()!r}"


def _reference_labels(ax) -> set[str]:
    """The references drawn (coincident ones share a line labelled "a = b")."""
    return {name for line in ax.get_lines() for name in line.get_label().split(" = ")} & set(plotting.REFERENCES)


def _is_rate_axis(ax) -> bool:
    """Fixed [0, 1] (with the small margin that keeps lines at 0 and 1 visible), ticks 0 … 1."""
    m = plotting.RATE_MARGIN
    return ax.get_ylim() == (-m, 1 + m) and list(ax.get_yticks()) == [0, 0.25, 0.5, 0.75, 1.0]


def test_reference_rates_are_recipient_base_donor_adapter_and_recipient_finetune():
    table = pd.DataFrame([{"model": m, "behavior": "refusal", "condition": c, "metric": "refusal", "value": v}
                          for m, c, v in (("a", "base", 0.1), ("a", "adapter", 0.9), ("b", "base", 0.2),
                                          ("b", "adapter", 0.8))])
    refs = plotting.reference_rates(table, "a", "b", "refusal").set_index("reference").value
    assert refs.to_dict() == {"recipient base": 0.2, "donor + adapter": 0.9, "recipient finetune": 0.8}


def test_dose_response_one_rate_per_axis_on_unit_range_with_references_and_ci():
    frame = _study("alpha_used", [0.5, 1.0, 2.0])
    fig = plotting.plot_dose_response(frame, ["refusal", "false_refusal"], panel="pair", references=_references())
    axes = _data_axes(fig)
    assert len(axes) == 4  # 2 metrics × 2 pairs, each drawn once
    for ax in axes:
        assert _is_rate_axis(ax)
        assert _reference_labels(ax) == set(plotting.REFERENCES)
        donor_line, finetune_line = (next(line for line in ax.get_lines() if line.get_label() == name)
                                     for name in ("donor + adapter", "recipient finetune"))
        assert donor_line.get_ydata()[0] == finetune_line.get_ydata()[0] == 0.95
        assert donor_line._dash_pattern[0] != finetune_line._dash_pattern[0]  # coincident: interleaved dashes
        assert ax.collections, "no CI band"
    assert axes[0].get_ylabel() == "refusal rate\n(harmful prompts)"
    assert axes[2].get_ylabel() == "false refusal rate\n(benign prompts)"
    assert axes[2].get_xlabel() == "paste scale α"
    assert [ax.get_title() for ax in axes[:2]] == PAIRS
    _assert_legends_off_the_data(fig)


def test_comparison_is_points_with_error_bars_not_lines():
    frame = _study("method", ["ridge", "interface", "transfer"])
    fig = plotting.plot_comparison(frame, ["refusal", "false_refusal"], x="method", panel="pair",
                                   references=_references())
    for ax in _data_axes(fig)[2:]:  # the bottom row carries the (shared) category labels
        assert [t.get_text() for t in ax.get_xticklabels()] == ["ridge", "interface", "label-free\ntransfer"]
    for ax in _data_axes(fig):
        assert _is_rate_axis(ax)
        data = [line for line in ax.get_lines() if not set(line.get_label().split(" = ")) & set(plotting.REFERENCES)
                and len(line.get_xdata()) > 1 and len(set(np.asarray(line.get_xdata(), float))) > 1]
        assert data and all(line.get_linestyle() == "None" for line in data), "categories joined by a line"
        assert _reference_labels(ax) == set(plotting.REFERENCES)
    assert _data_axes(fig)[-1].get_xlabel() == "converter method"
    _assert_legends_off_the_data(fig)


def test_rate_plots_without_references_draw_none():
    fig = plotting.plot_dose_response(_study("alpha_used", [1.0, 2.0]), ["refusal"], panel="pair")
    assert all(not _reference_labels(ax) for ax in _data_axes(fig))
    with pytest.raises(ValueError, match="metrics"):
        plotting.plot_comparison(_study("method", ["ridge"]), ["accuracy"], x="method")


def _similarity(chosen: dict[int, int]) -> pd.DataFrame:
    return pd.DataFrame([{"donor_layer": d, "recipient_layer": r, "similarity": 0.1 * d + 0.05 * r,
                          "chosen": chosen.get(d) == r, "metric": "cka"} for d in range(3) for r in range(4)])


def test_similarity_heatmap_annotated_with_chosen_cells_boxed():
    frame = _similarity({0: 0, 1: 2, 2: 3})
    fig = plotting.plot_similarity(frame, title="a → b")
    ax = _data_axes(fig)[0]
    texts = {t.get_text() for t in ax.texts}
    assert {f"{v:.2f}" for v in frame.similarity} <= texts and len(ax.texts) == 12
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert sorted((int(b.get_x() + 0.5), int(b.get_y() + 0.5)) for b in boxes) == [(0, 0), (2, 1), (3, 2)]
    assert ax.get_title() == "a → b" and "collapse" not in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("recipient layer", "donor layer")
    assert fig.axes[-1].get_ylabel() == "linear CKA"  # the colorbar: a human label
    _assert_legends_off_the_data(fig)


def test_similarity_flags_a_collapsed_map():
    fig = plotting.plot_similarity(_similarity({0: 2, 1: 2, 2: 2}), title="a → b")
    assert "collapsed" in _data_axes(fig)[0].get_title() and "recipient layer 2" in _data_axes(fig)[0].get_title()


def _fidelity() -> pd.DataFrame:
    rows = []
    for d, r in ((0, 0), (2, 1), (4, 3)):
        rows += [{"donor_layer": d, "recipient_layer": r, "metric": m, "value": v}
                 for m, v in (("state_cosine", 0.9), ("delta_cosine", 0.7), ("delta_norm_ratio", 1.2 + 5 * d),
                              ("heldout_r2_to_recipient", 0.8))]
    rows.append({"donor_layer": 5, "recipient_layer": 3, "metric": "effect_cosine", "value": 0.6})
    return pd.DataFrame(rows)


def test_fidelity_puts_one_unit_per_panel_as_points():
    fig = plotting.plot_fidelity(_fidelity(), ["state_cosine", "delta_cosine", "effect_cosine", "delta_norm_ratio",
                                               "heldout_r2_to_recipient"])
    axes = _data_axes(fig)
    assert [ax.get_ylabel() for ax in axes] == ["cosine\n(1 = same direction)",
                                                "norm ratio, pasted / donor\n(1 = same size)",
                                                "held-out R²\n(1 = exact)"]
    cosine, ratio, _ = axes
    assert [t.get_text() for t in cosine.get_xticklabels()] == ["0→0", "2→1", "4→3", "5→3"]
    assert [t.get_text() for t in ratio.get_xticklabels()] == ["0→0", "2→1", "4→3"]
    assert ratio.get_yscale() == "log"  # ratios 1.2 … 21: a log axis with 1 marked
    legend_labels = {t.get_text() for t in cosine.get_legend().get_texts()}
    assert legend_labels == {"state", "delta", "downstream effect"}  # human labels, no snake_case
    for ax in axes:
        assert all(line.get_linestyle() == "None" for line in ax.get_lines() if len(line.get_xdata()) > 2)
    _assert_legends_off_the_data(fig)
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="unit"):
        plotting.plot_fidelity(_fidelity(), ["state_cosine", "delta_norm_ratio"], ax=ax)


def test_attribution_rates_on_unit_axis_with_references_and_cis():
    rows = [{"subset": s, "layers": layers, "metric": "refusal", "value": v, "ci_low": v - 0.1, "ci_high": v + 0.05}
            for s, layers, v in (("all", "0,2", 0.9), ("single", "0", 0.2), ("single", "2", 0.6))]
    refs = _references()
    fig = plotting.plot_attribution(pd.DataFrame(rows), "refusal", references=refs[refs.pair == "a → b"])
    ax = _data_axes(fig)[0]
    assert _is_rate_axis(ax) and ax.get_ylabel() == "refusal rate\n(harmful prompts)"
    assert _reference_labels(ax) == set(plotting.REFERENCES)
    assert len(ax.patches) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0, 2", "0", "2"]  # the pasted layers
    assert {t.get_text() for t in ax.texts} == {"all layers", "one layer"}  # grouped by mode
    _assert_legends_off_the_data(fig)


def test_figures_saved_as_png_and_pdf(tmp_path):
    fig = plotting.plot_dose_response(_study("alpha_used", [1.0, 2.0]), ["refusal"], panel="pair")
    paths = plotting.save_figure(fig, tmp_path / "dose")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
