"""`analyze_transfer` (the `commandv analyze` report) shows the final edit layer by layer, as the demo does: on a
planted polish of the compiled paste (its last layer's write doubled) the final-edit table reads cosine 1 and norm
ratio 1 before that layer and ratio 2 at it; a planted distillation-only transfer is analyzed as its polished adapter,
with no paste to compare. Tiny models: the recipient is the donor in a rotated basis."""

import copy
import dataclasses
import importlib

import pandas as pd
import pytest
import torch

from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.app.report import analyze_transfer

PROMPTS = random_prompts(32, seed=11)
CHANGE = {"recipient_layer", "edit", "reference", "metric", "value", "split", "label", "analysis"}
ATTRIBUTION = {"condition", "layers", "n_pairs", "metric", "value", "split", "label", "analysis"}


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


@pytest.fixture(scope="module")
def pasted(pair):
    """A transfer that chose a paste of both adapter layers (no polish)."""
    donor, recipient, _ = pair
    adapter = random_adapter(donor.d_model, layers=(0, 2), scale=0.6, seed=3)
    t = cv.transfer(donor, recipient, adapter, PROMPTS, polish_steps=0, progress=False)
    assert t.converters is not None and t.polished is None
    return t


def _value(frame, layer, reference, metric, edit="polished"):
    sub = frame[(frame.analysis == "change") & (frame.recipient_layer == layer) & (frame.reference == reference)
                & (frame.metric == metric) & (frame.edit == edit)]
    assert len(sub) == 1, sub
    return float(sub.value.iloc[0])


def test_analyze_shows_what_a_planted_polish_changed_layer_by_layer(pair, pasted, tmp_path, monkeypatch):
    donor, recipient, _ = pair
    polish_change = importlib.import_module("commandv_interp.analysis.polish_change")
    report_module = importlib.import_module("commandv_interp.app.report")
    scored = []  # the polished adapter's attribution is scored once, and the final-edit section reuses it
    for module in (report_module, polish_change):
        original = module.subset_attribution
        monkeypatch.setattr(module, "subset_attribution",
                            lambda *a, _f=original, **k: scored.append(1) or _f(*a, **k))
    compiled = pasted.compile()
    polished = copy.deepcopy(compiled)
    last = max(polished.interventions)
    with torch.no_grad():
        polished.interventions[last].proj_layer.weight.mul_(2.0)  # the last edited layer: states before it unchanged
    t = dataclasses.replace(pasted, polished=polished, choice=f"{pasted.choice}+polish/4/lr=0.004")
    files = analyze_transfer(t, donor, recipient, random_prompts(10, seed=5), tmp_path)
    assert len(scored) == 1
    assert {tmp_path / "final_edit.csv", tmp_path / "final_edit_transfer.png"} <= set(files)
    final = pd.read_csv(tmp_path / "final_edit.csv")
    assert set(final.columns) == CHANGE | ATTRIBUTION
    assert set(final.label) == {"Command-V paste + 4 distillation steps"}
    change = final[final.analysis == "change"]
    assert set(change.recipient_layer) == set(compiled.layers)
    for layer in compiled.layers:
        assert _value(final, layer, "paste", "norm_ratio") == pytest.approx(2.0 if layer == last else 1.0, rel=1e-6)
        assert _value(final, layer, "paste", "delta_cosine") == pytest.approx(1.0, abs=1e-9)
        assert _value(final, layer, "residual", "norm_ratio") > 0
    attribution = final[final.analysis == "attribution"]
    assert set(attribution.condition) == {"none", "all", "single", "leave_one_out"}
    applied = pd.read_csv(tmp_path / "attribution.csv")  # the applied (polished) edit: the same rows, same answers
    pd.testing.assert_frame_equal(attribution[applied.columns].reset_index(drop=True), applied, check_dtype=False)
    assert set(attribution[attribution.condition == "single"].layers.astype(str)) == {str(x) for x in compiled.layers}
    report = (tmp_path / "report.md").read_text()
    assert "## The final edit, layer by layer" in report and "![final edit, transfer](final_edit_transfer.png)" in report
    for layer in compiled.layers:
        ratio = "2.00" if layer == last else "1.00"
        assert any(line.startswith(f"| {layer} |") and f"| 1.00 | {ratio} |" in line for line in report.splitlines())


def test_analyze_of_distillation_only_analyzes_the_polished_adapter(pair, pasted, tmp_path):
    donor, recipient, _ = pair
    fresh = random_adapter(recipient.d_model, layers=(1, 3), scale=0.6, seed=5)
    t = dataclasses.replace(pasted, converters=None, polished=fresh, choice="scratch+polish/8/lr=0.004")
    analyze_transfer(t, donor, recipient, random_prompts(10, seed=5), tmp_path)
    final = pd.read_csv(tmp_path / "final_edit.csv")
    assert set(final.label) == {"distillation only (no paste)"}
    change = final[final.analysis == "change"]
    assert set(change.reference) == {"residual"} and set(change.edit) == {"polished"}
    assert sorted(change.recipient_layer) == [1, 3]
    attribution = final[final.analysis == "attribution"]
    assert set(attribution[attribution.condition == "all"].layers) == {"1,3"}
    report = (tmp_path / "report.md").read_text()
    assert "distillation only (no paste)" in report and "| 1 |" in report and "| 3 |" in report
