"""What the polish changed, per recipient layer, on planted polishes: zero polish gives cosine 1 and norm ratio 1
exactly; a doubled write at the last layer gives ratio 2 there and 1 before it; a flipped one cosine −1; the norm
against the residual is the closed form. The final edit's attribution: a native adapter on its own model reproduces
the donor+adapter's answers."""

import copy

import pytest
import torch

from conftest import random_adapter, random_prompts

from commandv_interp.access import recorded_states
from commandv_interp.analysis import edit_attribution, polish_change
from commandv_interp.paste import apply_adapter


@pytest.fixture(scope="module")
def paste(nn_gpt2):
    return random_adapter(nn_gpt2.d_model, layers=(0, 2), scale=0.5, seed=3)


def _value(frame, layer, reference, metric, edit="polished"):
    sub = frame[(frame.recipient_layer == layer) & (frame.reference == reference) & (frame.metric == metric)
                & (frame.edit == edit)]
    assert len(sub) == 1, sub
    return float(sub.value.iloc[0])


def test_zero_polish_gives_cosine_one_and_norm_ratio_one_exactly(nn_gpt2, paste):
    prompts = random_prompts(12, seed=4)
    frame = polish_change(nn_gpt2, paste, copy.deepcopy(paste), prompts, scratch_adapter=copy.deepcopy(paste))
    for layer in (0, 2):
        for reference in ("paste", "scratch"):
            assert _value(frame, layer, reference, "delta_cosine") == 1.0
            assert _value(frame, layer, reference, "norm_ratio") == 1.0
    assert set(frame.split) == {"test"}


def test_a_planted_polish_of_the_last_layer_shows_at_that_layer_only(nn_gpt2, paste):
    prompts = random_prompts(10, seed=5)
    doubled, flipped = copy.deepcopy(paste), copy.deepcopy(paste)
    with torch.no_grad():
        doubled.interventions[2].proj_layer.weight.mul_(2.0)
        flipped.interventions[2].proj_layer.weight.neg_()
    frame = polish_change(nn_gpt2, paste, doubled, prompts, scratch_adapter=flipped)
    assert _value(frame, 0, "paste", "norm_ratio") == 1.0 and _value(frame, 0, "paste", "delta_cosine") == 1.0
    assert _value(frame, 2, "paste", "norm_ratio") == pytest.approx(2.0, rel=1e-6)
    assert _value(frame, 2, "paste", "delta_cosine") == pytest.approx(1.0, abs=1e-9)
    assert _value(frame, 2, "scratch", "delta_cosine") == pytest.approx(-1.0, abs=1e-9)
    assert _value(frame, 2, "scratch", "norm_ratio") == pytest.approx(2.0, rel=1e-6)


def test_norm_against_the_residual_is_the_closed_form(nn_gpt2, paste):
    prompts = random_prompts(8, seed=6)
    states = recorded_states(nn_gpt2, [0, 2], prompts, apply_adapter(nn_gpt2, paste))
    frame = polish_change(nn_gpt2, paste, paste, prompts)
    for layer in (0, 2):
        with torch.no_grad():
            h = states[layer]
            expected = float((paste.interventions[layer].delta(h).double().norm(dim=-1)
                              / h.double().norm(dim=-1)).mean())
        for edit in ("paste", "polished"):
            assert _value(frame, layer, "residual", "norm_ratio", edit) == pytest.approx(expected, rel=1e-5)


def test_layers_one_edit_lacks_have_no_cosine(nn_gpt2, paste):
    frame = polish_change(nn_gpt2, paste, paste.restricted([2]), random_prompts(6, seed=7))
    compared = frame[frame.reference == "paste"]
    assert set(compared.recipient_layer) == {2}
    with pytest.raises(ValueError, match="d_model"):
        polish_change(nn_gpt2, random_adapter(nn_gpt2.d_model + 1, layers=(0,)), paste, ["w1 w2"])
    with pytest.raises(ValueError, match="list of prompts"):
        polish_change(nn_gpt2, paste, paste, "w1 w2")


def test_a_native_adapter_on_its_own_model_reproduces_the_donor_answers(nn_llama):
    """Donor = recipient and the recipient adapter = the donor's: with all its layers the recipient says exactly
    what the donor+adapter says (criterion 1); each single layer and leave-one-out run is scored."""
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=1.0, seed=2)
    frame = edit_attribution(nn_llama, nn_llama, adapter, adapter, random_prompts(12, seed=8), max_new_tokens=4)
    crit = frame[frame.metric == "criterion"].set_index(["condition", "layers"])["value"]
    assert crit[("all", "0,2")] == 1.0
    assert {("single", "0"), ("single", "2"), ("leave_one_out", "2"), ("leave_one_out", "0")} <= set(crit.index)
    assert ("none", "") in crit.index


def test_final_edit_analysis_of_a_planted_transfer(nn_llama, nn_gpt2):
    """A planted polished paste (the compiled paste itself, so cosine 1) beside two scratch rounds: the comparison
    is with the better-scored one (its last layer's write tripled: norm ratio 1/3 there, 1 before), and every row
    carries the label."""
    from types import SimpleNamespace

    import pandas as pd

    import commandv_interp as cv
    from commandv_interp.analysis import final_edit_analysis

    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=1.0, seed=4)
    fit = random_prompts(40, seed=9)
    p_d, p_r = cv.profile(nn_llama, fit, progress=False), cv.profile(nn_gpt2, fit, progress=False)
    conv = cv.fit_converters(p_d, p_r, cv.match_layers(p_d, p_r, "depth", adapter.layers), "ridge")
    compiled = cv.compile_paste(adapter, conv)
    worse, better = copy.deepcopy(compiled), copy.deepcopy(compiled)
    last = max(better.interventions)
    with torch.no_grad():
        better.interventions[last].proj_layer.weight.mul_(3.0)  # the last layer: the states it reads are unchanged
    rounds = {"scratch+polish/4/lr=0.004": worse, "scratch+polish/4/lr=0.016": better}
    candidates = pd.DataFrame({"candidate": list(rounds) + ["ridge/depth+polish/4/lr=0.004"],
                               "criterion": [0.5, 0.7, 0.9], "lift": [0.1, 0.1, 0.2]})
    result = SimpleNamespace(choice="ridge/depth+polish/4/lr=0.004", converters=conv, adapter=adapter,
                             positions="last", alpha=1.0, polished=copy.deepcopy(compiled), rounds=rounds,
                             candidates=candidates)
    frames = final_edit_analysis(nn_llama, nn_gpt2, adapter, result, random_prompts(8, seed=10), max_new_tokens=3)
    change = frames["change"]
    for layer in set(change.recipient_layer):
        assert _value(change, layer, "paste", "delta_cosine") == 1.0
        expected = 1 / 3 if layer == last else 1.0
        assert _value(change, layer, "scratch", "norm_ratio") == pytest.approx(expected, rel=1e-6)
    assert set(frames["attribution"].label) == set(change.label) == {"Command-V paste + 4 distillation steps"}


def test_plot_polish_change_draws_the_panels_the_frames_hold(nn_gpt2, paste):
    """Polished vs paste and scratch: direction, size, push and share panels; distillation only (no paste to compare
    with): the push and share panels only. Axes carry human labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from commandv_interp import plotting

    prompts = random_prompts(6, seed=11)
    change = polish_change(nn_gpt2, paste, copy.deepcopy(paste), prompts, scratch_adapter=copy.deepcopy(paste))
    attribution = pd.DataFrame({"condition": ["none", "all", "single", "single", "leave_one_out", "leave_one_out"],
                                "layers": ["", "0,2", "0", "2", "2", "0"], "metric": "criterion",
                                "value": [0.1, 1.0, 0.4, 0.9, 0.4, 0.9]})
    fig = plotting.plot_polish_change(change, attribution, title="planted")
    assert [ax.get_title() for ax in fig.axes] == ["direction", "size", "push against the residual stream",
                                                  "share of the behavior"]
    assert all(ax.get_xlabel() == "recipient layer" for ax in fig.axes)
    only = polish_change(nn_gpt2, None, paste, prompts)
    assert set(only.reference) == {"residual"}
    fig2 = plotting.plot_polish_change(only, attribution)
    assert [ax.get_title() for ax in fig2.axes] == ["push against the residual stream", "share of the behavior"]
    plt.close("all")


def test_a_paste_through_identity_converters_attributes_as_the_native_adapter(nn_llama):
    """The one attribution rule (:func:`~commandv_interp.pipeline.applied.subset_attribution`) behind both entry
    points: pasting an adapter onto its own model through identity converters scores, row for row, as applying it
    natively (the same deltas), and the whole edit reproduces the donor+adapter's answers."""
    import pandas as pd

    from commandv_interp.analysis import agreement_attribution
    from commandv_interp.converters import Converters, LayerConverter, LinearConverter

    d = nn_llama.d_model
    adapter = random_adapter(d, layers=(0, 2), scale=1.0, seed=2)
    eye = LinearConverter(torch.eye(d))
    pairs = tuple(LayerConverter(layer, layer, eye, eye, {}) for layer in (0, 2))
    conv = Converters(pairs, "pinv", nn_llama.name, nn_llama.name, nn_llama.config_hash, nn_llama.config_hash, d, d,
                      "f" * 16)
    prompts = random_prompts(12, seed=8)
    pasted = agreement_attribution(nn_llama, nn_llama, adapter, conv, prompts, modes=("single", "leave_one_out"),
                                   max_new_tokens=4)
    native = edit_attribution(nn_llama, nn_llama, adapter, adapter, prompts, max_new_tokens=4)
    pd.testing.assert_frame_equal(pasted, native)
    assert pasted[(pasted.condition == "all") & (pasted.metric == "criterion")].value.item() == 1.0
