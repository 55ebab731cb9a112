"""Chained interface converters: each layer refitted on the states the paste feeds it (an independent recording
through ``analysis.paste_states`` is the oracle), the plain fit where nothing is chained, the α bookkeeping, and
the zoo pair the chain fixes."""

import warnings

import pytest
import torch

from conftest import assert_close, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.converters.interface import fit_interface_converters
from commandv_interp import analysis, zoo
from commandv_interp.correspondence import LayerMap
from commandv_interp.zoo.evaluate import evaluate
from commandv_interp.pipeline import derive, profile_pair
from commandv_interp.zoo.prompt_sets import profile_prompts


@pytest.fixture(scope="module")
def setup(nn_llama, nn_gpt2):
    prompts = random_prompts(64, seed=21)
    donor_profile = cv.profile(nn_llama, prompts, progress=False)
    recipient_profile = cv.profile(nn_gpt2, prompts, progress=False)
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), seed=7, scale=1.0)
    layer_map = LayerMap(((0, 0), (2, 1)), (float("nan"),) * 2, "manual")
    return prompts, donor_profile, recipient_profile, adapter, layer_map


def _same_pair(a, b, atol=1e-4):
    assert (a.donor_layer, a.recipient_layer) == (b.donor_layer, b.recipient_layer)
    for conv_a, conv_b in ((a.to_donor, b.to_donor), (a.to_recipient, b.to_recipient)):
        assert_close(conv_a.weight.double(), conv_b.weight.double(), atol=atol, rtol=1e-3)
        assert_close(conv_a.bias.double(), conv_b.bias.double(), atol=atol, rtol=1e-3)


def test_each_layer_is_fitted_on_the_states_the_paste_feeds_it(nn_llama, nn_gpt2, setup):
    """Layer 2's converters equal a plain interface fit on (the donor's states under its own adapter, the
    recipient's states under the chained paste at α) — recorded independently by ``analysis.paste_states``;
    layer 0, below every edit, keeps the plain fit; and the chained layer 2 differs from the plain one."""
    prompts, p_donor, p_recipient, adapter, layer_map = setup
    alpha = 0.7
    chained = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, layer_map, donor_profile=p_donor, recipient_profile=p_recipient,
        alpha=alpha)
    plain = fit_interface_converters(p_donor, p_recipient, layer_map, adapter)
    assert chained.extra["chained"] and chained.chain_alpha == alpha
    assert chained.adapter_digest == adapter.digest() and chained.method == "interface"
    _same_pair(chained.for_donor_layer(0), plain.for_donor_layer(0))

    with pytest.warns(UserWarning, match="chained at alpha=0.7"):  # the donor under its own adapter (α = 1)
        donor_states, _ = analysis.paste_states(nn_llama, nn_gpt2, adapter, chained, prompts, alpha=1.0)
    _, recipient_states = analysis.paste_states(nn_llama, nn_gpt2, adapter, chained, prompts, alpha=alpha)
    refit_donor = cv.ActivationProfile({**p_donor.activations, 2: donor_states[2]}, p_donor.model_name,
                                       p_donor.config_hash, p_donor.n_layers, p_donor.d_model, p_donor.dtype,
                                       p_donor.prompts_fingerprint)
    refit_recipient = cv.ActivationProfile({**p_recipient.activations, 1: recipient_states[1]},
                                           p_recipient.model_name, p_recipient.config_hash, p_recipient.n_layers,
                                           p_recipient.d_model, p_recipient.dtype, p_recipient.prompts_fingerprint)
    oracle = fit_interface_converters(refit_donor, refit_recipient, layer_map, adapter.restricted([2]))
    _same_pair(chained.for_donor_layer(2), oracle.for_donor_layer(2))
    moved = chained.for_donor_layer(2).to_donor.weight - plain.for_donor_layer(2).to_donor.weight
    assert float(moved.norm()) > 1e-2 * float(plain.for_donor_layer(2).to_donor.weight.norm())
    assert not nn_llama.active_edits and not nn_gpt2.active_edits


def test_one_recipient_layer_chains_nothing(nn_llama, nn_gpt2, setup):
    prompts, p_donor, p_recipient, adapter, _ = setup
    single = adapter.restricted([2])
    layer_map = LayerMap(((2, 1),), (float("nan"),), "manual")
    chained = cv.fit_chained_converters(nn_llama, nn_gpt2, single, prompts, layer_map, donor_profile=p_donor, recipient_profile=p_recipient)
    _same_pair(chained.for_donor_layer(2), fit_interface_converters(p_donor, p_recipient, layer_map, single).for_donor_layer(2))


def test_paste_warns_off_the_chain_alpha_and_the_fit_refuses_foreign_prompts(nn_llama, nn_gpt2, setup):
    prompts, p_donor, p_recipient, adapter, layer_map = setup
    chained = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, layer_map, donor_profile=p_donor, recipient_profile=p_recipient,
        alpha=0.5)
    batch = nn_gpt2.encode(random_prompts(3, seed=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cv.paste(nn_gpt2, adapter, chained, alpha=0.5):
            nn_gpt2.forward(batch)
    with pytest.warns(UserWarning, match=r"alpha=0.5 but are pasted at alpha=1.*alpha=1\)"):
        with cv.paste(nn_gpt2, adapter, chained, alpha=1.0):
            nn_gpt2.forward(batch)
    with pytest.raises(ValueError, match="taken on other prompts"):
        cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts[:-1], layer_map, donor_profile=p_donor, recipient_profile=p_recipient)
    with pytest.raises(ValueError, match="alpha must be finite"):
        cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, layer_map, donor_profile=p_donor, recipient_profile=p_recipient,
            alpha=float("nan"))
    assert not nn_gpt2.active_edits


@pytest.mark.slow
def test_chained_fit_transfers_refusal_where_the_plain_fit_does_not(zoo_gpt2):
    """The zoo pair the chain was built for: qwen2 → gpt2 refusal (depth, ``task`` profile set). Measured on all
    160 test prompts: plain interface 0.00 at α = 1 and at ¼ × norm-matched, chained at α = 0.25 1.00 with
    false refusal 0.00 (the direct finetune: 1.00 / 0.00)."""
    donor = zoo.load_model("qwen2-5x160")
    adapter = zoo.load_adapter("qwen2-5x160", "refusal")
    pair = profile_pair(donor, zoo_gpt2, profile_prompts("task", "refusal"))
    plain = derive(donor, zoo_gpt2, pair, adapter.layers, method="interface", adapter=adapter)
    chained = derive(donor, zoo_gpt2, pair, adapter.layers, method="interface", adapter=adapter, chain_alpha=0.25)
    assert chained.flops > plain.flops  # one donor pass and two recipient passes more
    with cv.paste(zoo_gpt2, adapter, plain.converters):
        assert evaluate(zoo_gpt2, "refusal", limit=40)["refusal"] <= 0.1
    with cv.paste(zoo_gpt2, adapter, chained.converters, alpha=0.25):
        rates = evaluate(zoo_gpt2, "refusal", limit=40)
    assert rates["refusal"] >= 0.9 and rates["false_refusal"] <= 0.05


def test_the_profile_free_fit_equals_the_fit_from_profiles(nn_llama, nn_gpt2, setup):
    """Without profiles the chain records what it needs itself (the donor's lowest adapter layer under its own
    adapter is its plain state) and gives the converters the profiles give; with no layer map it takes the
    paper's relative depth, the map ``match_layers(method="depth")`` gives."""
    prompts, p_donor, p_recipient, adapter, layer_map = setup
    from_profiles = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, layer_map, donor_profile=p_donor, recipient_profile=p_recipient,
        alpha=0.7)
    free = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, layer_map=layer_map, alpha=0.7)
    for layer in adapter.layers:
        _same_pair(free.for_donor_layer(layer), from_profiles.for_donor_layer(layer))
    assert free.donor_model == from_profiles.donor_model and free.recipient_model == from_profiles.recipient_model
    depth = cv.match_layers(p_donor, p_recipient, method="depth", donor_layers=adapter.layers)
    want = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, depth, donor_profile=p_donor, recipient_profile=p_recipient)
    got = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts)
    assert got.layer_map() == want.layer_map() == depth.as_dict()
    for layer in adapter.layers:
        _same_pair(got.for_donor_layer(layer), want.for_donor_layer(layer))
    with pytest.raises(ValueError, match=r"no recipient layer for donor layers \[2\]"):
        cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts,
                                            layer_map=LayerMap(((0, 0),), (float("nan"),), "manual"))
    assert not nn_llama.active_edits and not nn_gpt2.active_edits


def test_derive_counts_the_passes_each_derivation_needs(nn_llama, nn_gpt2, setup):
    """FLOPs in closed form (``forward_flops`` of each pass, stopped after the deepest layer it reads, plus
    ``4 · N · d_in · d_out`` per fitted map): depth-matched profiles stop at the mapped layers, similarity needs
    all; the chained depth fit runs its own passes and needs no profiles."""
    from commandv_interp.access import forward_flops

    prompts, _, _, adapter, _ = setup
    n, d_d, d_r = len(prompts), nn_llama.d_model, nn_gpt2.d_model
    ff = lambda model, layer: forward_flops(model, prompts, layer)  # noqa: E731
    pair = profile_pair(nn_llama, nn_gpt2, prompts)
    assert pair.flops == ff(nn_llama, 3) + ff(nn_gpt2, 2)
    depth = derive(nn_llama, nn_gpt2, pair, adapter.layers, method="ridge")
    assert depth.layer_map.as_dict() == {0: 0, 2: 2}
    assert depth.flops == pytest.approx(ff(nn_llama, 2) + ff(nn_gpt2, 2) + 4.0 * n * 2 * d_d * d_r * 2)
    similar = derive(nn_llama, nn_gpt2, pair, adapter.layers, match="similarity", method="ridge")
    assert similar.flops == pytest.approx(pair.flops + 4.0 * n * 2 * d_d * d_r * 2)
    fit = 4.0 * n * 2 * 2 * adapter.rank * (d_d + d_r) * 2
    chained = derive(nn_llama, nn_gpt2, pair, adapter.layers, method="interface", adapter=adapter, chain_alpha=0.5)
    assert chained.flops == pytest.approx(ff(nn_llama, 2) + ff(nn_gpt2, 0) + ff(nn_gpt2, 2) + fit)
    assert chained.donor_profile is pair.donor_profile and chained.converters.chain_alpha == 0.5
    want = cv.fit_chained_converters(nn_llama, nn_gpt2, adapter, prompts, alpha=0.5)
    for layer in adapter.layers:
        _same_pair(chained.converters.for_donor_layer(layer), want.for_donor_layer(layer))
    listed = derive(nn_llama, nn_gpt2, prompts, adapter.layers, method="interface", adapter=adapter, chain_alpha=0.5)
    assert listed.donor_profile is None and listed.flops == chained.flops
