"""Analysis metrics against closed forms: an identity paste is perfectly faithful, a rotated-basis recipient
reproduces the donor's deltas exactly, null baselines keep what they claim to keep, and plots come from frames."""

import dataclasses

import pytest
import torch

from conftest import random_prompts, rotated_llama

import commandv_interp as cv
from commandv_interp import analysis, plotting
from commandv_interp.adapters import make_intervention


def _adapter(d_model, layers=(0, 2), seed=0, scale=0.5, zero=()):
    torch.manual_seed(seed)
    ivs = {}
    for layer in layers:
        iv = make_intervention("nodireft", d_model, 4)
        with torch.no_grad():
            for p in iv.parameters():
                p.add_(scale * torch.randn_like(p))
                if layer in zero:
                    p.zero_()
        ivs[layer] = iv.requires_grad_(False)
    return cv.Adapter(ivs)


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(96, seed=7)  # ≥ d_model (32): pinv converters are exact


@pytest.fixture(scope="module")
def identity(nn_llama, prompts):
    p = cv.profile(nn_llama, prompts, progress=False)
    layer_map = cv.match_layers(p, p, method="similarity")
    return p, layer_map, cv.fit_converters(p, p, layer_map, method="pinv")


@pytest.fixture(scope="module")
def rotated(hf_llama, nn_llama, prompts):
    model, _ = rotated_llama(hf_llama[0], seed=3)
    recipient = cv.open_model(model, tokenizer=hf_llama[1], name="rotated-llama")
    pd_, pr = cv.profile(nn_llama, prompts, progress=False), cv.profile(recipient, prompts, progress=False)
    return recipient, pd_, pr, cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr), method="pinv")


def _values(frame, **where):
    sub = frame
    for k, v in where.items():
        sub = sub[sub[k] == v]
    return dict(zip(sub.metric, sub.value))


def test_identity_converter_fidelity_is_perfect(identity):
    p, _, conv = identity
    frame = analysis.converter_fidelity(conv, p, p)
    assert list(frame.columns) == analysis.fidelity.PAIR_COLUMNS and set(frame.split) == {"profile"}
    for layer in range(4):
        v = _values(frame, donor_layer=layer)
        assert v["heldout_r2_to_donor"] == pytest.approx(1, abs=1e-6)
        assert v["round_trip_error_recipient"] == pytest.approx(0, abs=1e-6)
        assert v["cka"] == pytest.approx(1, abs=1e-6)
        assert v["effective_rank_donor"] == pytest.approx(v["effective_rank_recipient"])
        assert 1 < v["effective_rank_donor"] <= 32


def test_identity_paste_state_delta_and_downstream_fidelity_are_one(nn_llama, identity):
    p, _, conv = identity
    adapter = _adapter(nn_llama.d_model)
    evals = random_prompts(12, seed=11)
    frame = analysis.state_delta_fidelity(nn_llama, nn_llama, adapter, conv, evals)
    for layer in adapter.layers:
        v = _values(frame, donor_layer=layer)
        for metric in ("state_r2", "state_cosine", "delta_cosine", "delta_norm_ratio", "backward_cosine",
                       "backward_norm_ratio"):
            assert v[metric] == pytest.approx(1, abs=1e-4), metric
        assert v["pasted_to_residual_norm"] == pytest.approx(v["donor_to_residual_norm"], rel=1e-4)
        assert v["pasted_to_residual_norm"] > 0.01
    down = analysis.downstream_fidelity(nn_llama, nn_llama, adapter, conv, evals, p, p, contrast=("w1", "w2"),
                                        method="pinv")
    layers = down.dropna(subset=["recipient_layer"])
    assert sorted(set(layers.recipient_layer)) == [0, 1, 2, 3]  # every layer from the first pasted one
    for metric in ("effect_cosine", "effect_norm_ratio"):
        assert layers[layers.metric == metric].value.tolist() == pytest.approx([1] * 4, abs=1e-3), metric
    out = _values(down[down.recipient_layer.isna()])
    assert out["kl_donor_adapter_vs_recipient_paste"] == pytest.approx(0, abs=1e-8)
    assert out["tv_donor_adapter_vs_recipient_paste"] == pytest.approx(0, abs=1e-6)
    assert out["logit_diff_recipient_paste"] == pytest.approx(out["logit_diff_donor_adapter"], abs=1e-5)
    assert out["logit_diff_recipient_paste"] != pytest.approx(out["logit_diff_recipient_base"], abs=1e-3)


def test_rotated_basis_recipient_reproduces_the_donor_delta(nn_llama, rotated):
    recipient, pd_, pr, conv = rotated
    adapter = _adapter(nn_llama.d_model, layers=(1, 3))
    frame = analysis.state_delta_fidelity(nn_llama, recipient, adapter, conv, random_prompts(10, seed=4))
    for layer in (1, 3):
        v = _values(frame, donor_layer=layer)
        assert v["delta_cosine"] == pytest.approx(1, abs=1e-3) and v["delta_norm_ratio"] == pytest.approx(1, abs=1e-3)
        assert v["state_r2"] == pytest.approx(1, abs=1e-3)


def test_recording_sees_the_state_before_the_edit_and_leaves_no_hooks(nn_llama, identity):
    _, _, conv = identity
    adapter = _adapter(nn_llama.d_model)
    evals = random_prompts(5, seed=2)
    clean = analysis.last_states(nn_llama, evals, [0])[0]
    donor_states, recipient_states = analysis.paste_states(nn_llama, nn_llama, adapter, conv, evals)
    torch.testing.assert_close(donor_states[0], clean, atol=1e-5, rtol=1e-5)  # layer 0 precedes every edit
    torch.testing.assert_close(recipient_states[2], donor_states[2], atol=1e-4, rtol=1e-4)
    assert not nn_llama.active_edits


def test_random_delta_keeps_the_pasted_norm_not_the_direction(nn_gpt2, nn_llama, prompts):
    pd_, pr = cv.profile(nn_llama, prompts, progress=False), cv.profile(nn_gpt2, prompts, progress=False)
    conv = cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr), method="ridge")
    adapter = _adapter(nn_llama.d_model, layers=(0,))
    evals = random_prompts(40, seed=9)
    clean = analysis.last_states(nn_gpt2, evals, [0])[0]
    with cv.paste(nn_gpt2, adapter, conv):
        real = analysis.last_states(nn_gpt2, evals, [0])[0] - clean
    with analysis.random_delta_paste(nn_gpt2, adapter, conv, seed=1):
        rand = analysis.last_states(nn_gpt2, evals, [0])[0] - clean
    torch.testing.assert_close(rand.norm(dim=-1), real.norm(dim=-1), atol=1e-5, rtol=1e-4)
    assert abs(analysis.mean_cosine(rand, real)) < 0.2  # 40 random directions in 24 dims
    assert not nn_gpt2.active_edits


def test_attribution_of_a_null_layer_is_zero_and_all_equals_paste(nn_llama, identity):
    _, _, conv = identity
    adapter = _adapter(nn_llama.d_model, layers=(0, 2), zero=(2,))  # layer 2's intervention is exactly zero
    evals = random_prompts(8, seed=3)
    frame = analysis.layer_attribution(nn_llama, adapter, conv, evals, contrast=("w1", "w2"))
    v = {(c, layers): value for c, layers, value in zip(frame.condition, frame.layers, frame.value)}
    assert v[("single", "2")] == pytest.approx(v[("none", "")], abs=1e-5)
    # labels list the layers that were pasted: leaving out layer 2 pastes "0"
    assert v[("leave_one_out", "0")] == pytest.approx(v[("all", "0,2")], abs=1e-5)
    assert v[("leave_one_out", "2")] == pytest.approx(v[("none", "")], abs=1e-5)
    with cv.paste(nn_llama, adapter, conv):
        direct = float(analysis.logit_difference(nn_llama, evals, "w1", "w2").mean())
    assert v[("all", "0,2")] == pytest.approx(direct, abs=1e-6)
    assert v[("cumulative_first", "0")] == pytest.approx(direct, abs=1e-5)


def test_native_attribution_equals_a_paste_through_identity_converters(nn_llama, nn_gpt2, identity):
    """converters=None applies the subsets to the adapter's own model: every row equals pasting them into the donor
    through identity converters; an adapter of another width is refused."""
    _, _, conv = identity
    adapter = _adapter(nn_llama.d_model, layers=(0, 2))
    evals = random_prompts(8, seed=4)
    native = analysis.layer_attribution(nn_llama, adapter, None, evals, contrast=("w1", "w2"))
    pasted = analysis.layer_attribution(nn_llama, adapter, conv, evals, contrast=("w1", "w2"))
    assert native[["condition", "layers"]].equals(pasted[["condition", "layers"]])
    assert native.value.tolist() == pytest.approx(pasted.value.tolist(), abs=1e-4)
    assert native.value.nunique() > 2  # the subsets score differently: the comparison is not vacuous
    with pytest.raises(ValueError, match="applies the adapter natively"):
        analysis.layer_attribution(nn_gpt2, adapter, None, evals, contrast=("w1", "w2"))
    assert not nn_llama.active_edits


def test_null_baselines_report_every_condition(nn_llama, identity):
    p, _, conv = identity
    adapter, other = _adapter(nn_llama.d_model), _adapter(nn_llama.d_model, seed=5)
    calls = []
    frame = analysis.null_baselines(nn_llama, adapter, conv, random_prompts(6, seed=1), contrast=("w1", "w2"),
                                    behavior_score=lambda m: calls.append(len(m.active_edits)) or 0.5,
                                    profiles=(p, p), other_adapters={"other": other})
    assert set(frame.condition) == {"none", "paste", "random_delta", "shuffled_converters", "other_behavior:other"}
    assert calls == [0, 2, 2, 2, 2]  # the score ran under each condition's edits
    shuffled = analysis.shuffled_converters(p, p, conv)
    fit = shuffled.for_donor_layer(1).fit_scores["to_donor"]["r2"]
    assert fit < 0.5 < conv.for_donor_layer(1).fit_scores["to_donor"]["r2"]
    with pytest.raises(ValueError, match="contrast"):
        analysis.null_baselines(nn_llama, adapter, conv, ["w1"])


def test_layer_subsets_modes():
    subsets = analysis.layer_subsets([0, 2, 4])
    assert ("leave_one_out", (0, 4)) in subsets and ("cumulative_last", (2, 4)) in subsets
    with pytest.raises(ValueError, match="mode"):
        analysis.layer_subsets([0], ["sideways"])


def test_plots_come_from_frames_and_save_png_and_pdf(identity, nn_llama, tmp_path):
    p, layer_map, conv = identity
    sim = analysis.similarity_frame(layer_map)
    assert sim.chosen.sum() == 4 and len(sim) == 16
    fig = plotting.plot_similarity(sim)
    assert fig.axes[0].get_xlabel() == "recipient layer"
    paths = plotting.save_figure(fig, tmp_path / "sim")
    assert all(path.stat().st_size > 1000 for path in paths)
    fid = analysis.converter_fidelity(conv, p, p)
    fig = plotting.plot_fidelity(fid, ["cka", "round_trip_error_recipient"])
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert "value" not in ylabels and len(ylabels) == len(set(ylabels)) == 2  # one quantity (unit) per panel
    attr = analysis.layer_attribution(nn_llama, _adapter(nn_llama.d_model), conv, random_prompts(4),
                                      contrast=("w1", "w2"), modes=["single"])
    nulls = analysis.null_baselines(nn_llama, _adapter(nn_llama.d_model), conv, random_prompts(4),
                                    contrast=("w1", "w2"))
    fig = plotting.plot_attribution(attr, baselines=nulls)
    assert len(fig.axes[0].patches) == 3 + 1  # all + 2 singles, then random_delta
    plotting.save_figure(fig, tmp_path / "attr")
    with pytest.raises(ValueError, match="columns"):
        plotting.plot_fidelity(attr)
    with pytest.raises(ValueError, match="similarity"):
        analysis.similarity_frame(dataclasses.replace(layer_map, similarity=None))


def test_contrast_fidelity_is_one_for_identity_and_halved_by_a_shrunk_read(nn_llama, identity):
    """Identity converters carry the between-group difference exactly; a read that shrinks every state halfway to
    the profile mean (what a ridge fit does to weak signals) halves the contrast but keeps the mean delta."""
    p, _, conv = identity
    adapter = _adapter(nn_llama.d_model, layers=(1,), scale=0.5)
    group_a, group_b = random_prompts(8, seed=21, max_len=4), random_prompts(8, seed=22, min_len=8, max_len=12)
    frame = analysis.contrast_fidelity(nn_llama, nn_llama, adapter, conv, group_a, group_b)
    v = _values(frame, donor_layer=1)
    assert v["contrast_ratio"] == pytest.approx(1, abs=1e-4) and v["contrast_cosine"] == pytest.approx(1, abs=1e-4)
    assert v["mean_delta_ratio"] == pytest.approx(1, abs=1e-4)
    assert v["contrast_share_pasted"] == pytest.approx(v["contrast_share_donor"], rel=1e-3)
    # h ↦ ½ h + ½ μ: an affine read that halves every difference; the NodiReFT read is linear, so the contrast halves
    pair = conv.for_donor_layer(1)
    mu = p[1].double().mean(0)
    shrunk = cv.converters.LinearConverter(0.5 * torch.eye(nn_llama.d_model, dtype=torch.float64), None, 0.5 * mu)
    half = dataclasses.replace(conv, pairs=(dataclasses.replace(pair, to_donor=shrunk),))
    frame = analysis.contrast_fidelity(nn_llama, nn_llama, adapter, half, group_a, group_b)
    assert _values(frame, donor_layer=1)["contrast_ratio"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="both prompt groups"):
        analysis.contrast_fidelity(nn_llama, nn_llama, adapter, conv, group_a, [])
