"""The remote path (nnsight ``remote=``) against local runs, through nnsight's ``remote="local"`` simulation with
this package made unimportable during deserialization (the ``server_like`` fixture): what passes here ships to
NDIF without anything of ``commandv_interp`` installed there."""

import pytest
import torch

from conftest import assert_close

import commandv_interp as cv
from commandv_interp import analysis, zoo
from commandv_interp.access.positions import gather_rows

PROMPTS = zoo.prompts("jailbreak", "test")[:5] + zoo.prompts("cot", "test")[:4]


@pytest.fixture(scope="module")
def pasted_pair(zoo_gpt2, zoo_llama):
    """Ridge converters gpt2 → llama and the gpt2 jailbreak adapter (the demo's transfer)."""
    adapter = zoo.load_adapter("gpt2-4x96", "jailbreak")
    prompts = zoo.prompts("refusal", "profile")[:160]
    pd_, pr = cv.profile(zoo_gpt2, prompts, progress=False), cv.profile(zoo_llama, prompts, progress=False)
    conv = cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, donor_layers=adapter.layers), method="ridge")
    return adapter, conv


@pytest.mark.parametrize("side", ["left", "right"])
def test_remote_profile_equals_local_in_one_request(zoo_llama, server_like, side):
    local = cv.profile(zoo_llama, PROMPTS, batch_size=4, padding_side=side, progress=False)
    remote = cv.profile(zoo_llama, PROMPTS, batch_size=4, padding_side=side, progress=False, remote="local")
    assert server_like.requests == 1  # three batches, one session
    assert server_like.refused == []
    assert remote.prompts_fingerprint == local.prompts_fingerprint and remote.layers == local.layers
    for layer in local.layers:
        value = remote[layer]
        assert value.dtype == torch.float32 and value.device.type == "cpu" and not value.requires_grad
        assert value.shape == (len(PROMPTS), zoo_llama.d_model)  # last-token vectors only
        assert_close(value, local[layer], atol=0, rtol=0)


def test_remote_read_all_positions_and_bpe_model(zoo_gpt2, server_like):
    batch = zoo_gpt2.encode(PROMPTS[:3], padding_side="right")
    local = zoo_gpt2.read(batch, [0, 3], positions="all")
    remote = zoo_gpt2.read(batch, [0, 3], positions="all", remote="local")
    for layer in (0, 3):
        assert_close(remote[layer], local[layer], atol=0, rtol=0)


@pytest.mark.parametrize("positions", ["last", "last+decode", "first_last"])
def test_remote_paste_equals_local(zoo_llama, pasted_pair, server_like, positions):
    adapter, conv = pasted_pair
    k = 2 if positions == "first_last" else None
    batch = zoo_llama.encode(PROMPTS)
    with cv.paste(zoo_llama, adapter, conv, positions=positions, alpha=0.7, first_last_k=k):
        local_texts = zoo_llama.generate(batch, max_new_tokens=20)
        remote_texts = zoo_llama.generate(batch, max_new_tokens=20, remote="local")
        local_logits = zoo_llama.forward(batch).detach()
        remote_logits = zoo_llama.forward(batch, remote="local")
    assert remote_texts == local_texts
    with torch.no_grad():
        base_logits = zoo_llama.forward(batch)
    assert not torch.allclose(local_logits, base_logits, atol=1e-2)  # the paste does something
    mask = batch.attention_mask.bool()
    assert_close(remote_logits[mask], local_logits[mask], atol=2e-4, rtol=1e-4)  # compiled vs step by step
    assert server_like.requests == 2 and server_like.refused == []


def test_remote_compiled_adapter_equals_local_exactly(zoo_llama, pasted_pair, server_like):
    adapter, conv = pasted_pair
    compiled = cv.compile_paste(adapter, conv)
    batch = zoo_llama.encode(PROMPTS, padding_side="right")
    with cv.apply_adapter(zoo_llama, compiled):
        local = zoo_llama.read(batch, [5])[5]
        remote = zoo_llama.read(batch, [5], remote="local")[5]
        texts = zoo_llama.generate(batch, 16), zoo_llama.generate(batch, 16, remote="local")
    assert_close(remote, local, atol=1e-5, rtol=1e-5)
    assert texts[0] == texts[1]


def test_remote_refuses_edits_without_a_low_rank_form(zoo_llama, pasted_pair):
    adapter, conv = pasted_pair
    batch = zoo_llama.encode(PROMPTS[:2])
    with analysis.random_delta_paste(zoo_llama, adapter, conv):
        with pytest.raises(ValueError, match="cannot run in a remote trace"):
            zoo_llama.generate(batch, 4, remote="local")


def test_remote_needs_the_nnsight_backend(tl_llama):
    batch = tl_llama.encode(["w1 w2"])
    with pytest.raises(ValueError, match="nnsight backend"):
        tl_llama.read(batch, [0], remote="local")


def test_simulated_server_lacks_this_package(zoo_llama, server_like):
    """The fixture can fail: a trace that calls one of our functions without shipping it breaks, as on NDIF."""
    batch = zoo_llama.encode(PROMPTS[:2])
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    index, nn = batch.last_index, zoo_llama.nn
    with pytest.raises(ModuleNotFoundError, match="commandv_interp"):
        with nn.trace(inputs, remote="local"):
            rows = gather_rows(nn.model.layers[1].output, index).save()
    assert any(name.startswith("commandv_interp") for name in server_like.refused)


def test_open_model_keeps_an_nnsight_model(zoo_llama, server_like):
    """``open_model(LanguageModel(...))`` reuses the user's nnsight model (its hub id is what NDIF is asked for)."""
    from nnsight.modeling.transformers import TransformersModel

    envoy = TransformersModel(zoo_llama.torch_module, tokenizer=zoo_llama.tokenizer)
    access = cv.open_model(envoy, name="wrapped")
    assert access.nn is envoy and access.config_hash == zoo_llama.config_hash
    batch = access.encode(PROMPTS[:3])
    assert_close(access.read(batch, [4], remote="local")[4], zoo_llama.read(batch, [4])[4], atol=0, rtol=0)


def test_remote_composes_nested_edits_like_local(zoo_llama, pasted_pair, server_like):
    """A paste inside an adapter at the same layers: both run remotely, in the local order."""
    adapter, conv = pasted_pair
    native = cv.compile_paste(adapter, conv, alpha=0.5)
    batch = zoo_llama.encode(PROMPTS[:6])
    with cv.apply_adapter(zoo_llama, native), cv.paste(zoo_llama, adapter, conv, alpha=0.5):
        local, remote = zoo_llama.read(batch, [5])[5], zoo_llama.read(batch, [5], remote="local")[5]
        texts = zoo_llama.generate(batch, 12), zoo_llama.generate(batch, 12, remote="local")
    with cv.paste(zoo_llama, adapter, conv, alpha=0.5):
        single = zoo_llama.read(batch, [5])[5]
    assert not torch.allclose(local, single, atol=1e-3)  # the two edits really stack
    assert_close(remote, local, atol=1e-3, rtol=1e-4)
    assert texts[0] == texts[1]
