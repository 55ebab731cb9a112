"""Models spread over devices: every converter and adapter piece is placed once, on the device its recipient block
computes on (read from the block, never assumed), and never moved while the model runs."""

import pytest
import torch

from conftest import assert_close

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.adapters import Intervention
from commandv_interp.converters import LinearConverter
from commandv_interp.converters.transport import PastedDelta, pasted_deltas

PROMPTS = zoo.prompts("jailbreak", "test")[:4] + zoo.prompts("refusal", "test")[:3]
OFFLOADED = (2, 3)


@pytest.fixture(scope="module")
def pair(zoo_gpt2, zoo_llama):
    adapter = zoo.load_adapter("gpt2-4x96", "jailbreak")
    prompts = zoo.prompts("refusal", "profile")[:160]
    pd_, pr = cv.profile(zoo_gpt2, prompts, progress=False), cv.profile(zoo_llama, prompts, progress=False)
    return adapter, cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, donor_layers=adapter.layers), method="ridge")


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """The zoo Llama dispatched by accelerate with a hand-made device map: blocks 2 and 3 offloaded to disk (their
    parameters sit on the ``meta`` device and are loaded by hooks), the rest on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo.model_dir("llama-6x128")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": "disk" if i in OFFLOADED else "cpu" for i in range(6)}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=device_map,
                                                 offload_folder=str(tmp_path_factory.mktemp("offload")))
    return cv.open_model(model, AutoTokenizer.from_pretrained(path), name="llama-6x128-offloaded")


def test_block_device_comes_from_the_block_not_its_parameters(offloaded):
    for layer in range(offloaded.n_layers):
        block = offloaded.torch_module.model.layers[layer]
        assert next(block.parameters()).device.type == ("meta" if layer in OFFLOADED else "cpu")
        assert offloaded.block_device(layer) == torch.device("cpu")  # where it computes


def test_offloaded_model_profiles_and_pastes_like_the_plain_one(offloaded, zoo_llama, pair):
    adapter, conv = pair
    plain = cv.profile(zoo_llama, PROMPTS, progress=False)
    spread = cv.profile(offloaded, PROMPTS, progress=False)
    assert spread.config_hash == plain.config_hash
    for layer in plain.layers:
        assert spread[layer].device.type == "cpu" and spread[layer].dtype == torch.float32
        assert_close(spread[layer], plain[layer], atol=0, rtol=0)
    batch = zoo_llama.encode(PROMPTS)
    with cv.paste(zoo_llama, adapter, conv):
        expected = zoo_llama.generate(batch, 16), zoo_llama.forward(batch).detach()
    with cv.paste(offloaded, adapter, conv):
        got = offloaded.generate(batch, 16), offloaded.forward(batch).detach()
    assert got[0] == expected[0]
    assert_close(got[1], expected[1], atol=0, rtol=0)


def test_pieces_are_placed_on_their_blocks_device(zoo_llama, pair, monkeypatch):
    """With block devices made to differ (``meta`` stands in for a second accelerator), each piece lands on its
    own block's device."""
    adapter, conv = pair
    devices = {layer: torch.device("meta" if layer % 2 else "cpu") for layer in range(zoo_llama.n_layers)}
    monkeypatch.setattr(zoo_llama, "block_device", lambda layer: devices[layer])
    per_layer = pasted_deltas(zoo_llama, adapter, conv)
    assert sorted(per_layer) == sorted({conv.for_donor_layer(l).recipient_layer for l in adapter.layers})
    for layer, fns in per_layer.items():
        for fn in fns:
            assert isinstance(fn, PastedDelta)
            tensors = [*fn.intervention.parameters(), fn.to_donor.left, fn.to_recipient.left]
            tensors += [t for t in (fn.to_donor.right, fn.to_donor.bias, fn.to_recipient.right) if t is not None]
            assert {t.device for t in tensors} == {devices[layer]}
    assert {p.device.type for iv in adapter.interventions.values() for p in iv.parameters()} == {"cpu"}  # copies


def test_pieces_are_never_moved_while_generating(zoo_llama, pair, monkeypatch):
    adapter, conv = pair
    batch = zoo_llama.encode(PROMPTS)
    moves = []
    with cv.paste(zoo_llama, adapter, conv, positions="last+decode", alpha=0.5):
        monkeypatch.setattr(LinearConverter, "to", lambda self, *a, **k: moves.append(("converter", a, k)) or self)
        monkeypatch.setattr(Intervention, "to", lambda self, *a, **k: moves.append(("adapter", a, k)) or self)
        zoo_llama.generate(batch, 8)
    assert moves == []
