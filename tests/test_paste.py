import pytest
import torch

from conftest import assert_close, random_adapter as _adapter, random_prompts, rotated_llama

import commandv_interp as cv


@pytest.fixture(scope="module")
def profile_prompts():
    return random_prompts(96, seed=7)  # ≥ d_model (32) prompts


@pytest.fixture(scope="module")
def rotated(hf_llama, tiny_dir):
    model, q = rotated_llama(hf_llama[0], seed=3)
    return cv.open_model(model, tokenizer=hf_llama[1], name="rotated-llama"), q


def _converters(donor, recipient, prompts, method="pinv", match="depth"):
    pd_, pr = cv.profile(donor, prompts, progress=False), cv.profile(recipient, prompts, progress=False)
    return cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, method=match), method=method)


@pytest.mark.parametrize("side", ["left", "right"])
def test_identity_paste_reproduces_donor_adapter(nn_llama, profile_prompts, side):
    adapter = _adapter(nn_llama.d_model)
    conv = _converters(nn_llama, nn_llama, profile_prompts)
    batch = nn_llama.encode(random_prompts(5, seed=1), padding_side=side)
    with cv.apply_adapter(nn_llama, adapter):
        expected = nn_llama.forward(batch).detach()
    with cv.paste(nn_llama, adapter, conv, positions="last"):
        got = nn_llama.forward(batch).detach()
    mask = batch.attention_mask.bool()
    assert_close(got[mask], expected[mask], atol=1e-4)


def test_rotated_recipient_reproduces_donor_adapter(nn_llama, rotated, profile_prompts):
    recipient, q = rotated
    batch = nn_llama.encode(random_prompts(6, seed=2))
    clean_donor = nn_llama.forward(batch).detach()
    assert_close(recipient.forward(batch).detach(), clean_donor, atol=1e-4)  # same function, rotated basis
    adapter = _adapter(nn_llama.d_model, kind="loreft")
    pd_, pr = cv.profile(nn_llama, profile_prompts, progress=False), cv.profile(recipient, profile_prompts,
                                                                                 progress=False)
    assert cv.match_layers(pd_, pr, method="similarity").as_dict() == {l: l for l in range(4)}
    conv = cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, method="depth", donor_layers=[0, 2]), method="pinv")
    assert_close(conv.for_donor_layer(0).to_donor.weight.float(), q, atol=1e-3)  # h_D = h_R Qᵀ = h_R Wᵀ
    with cv.apply_adapter(nn_llama, adapter):
        expected = nn_llama.forward(batch).detach()
    with cv.paste(recipient, adapter, conv, positions="last"):
        got = recipient.forward(batch).detach()
    assert not torch.allclose(expected, clean_donor, atol=1e-3)
    mask = batch.attention_mask.bool()
    assert_close(got[mask], expected[mask], atol=1e-4)


@pytest.mark.parametrize("positions", ["last", pytest.param("all", marks=pytest.mark.slow),
                                       pytest.param("last+decode", marks=pytest.mark.slow)])
def test_compiled_equals_paste_across_backends(nn_llama, tl_llama, nn_gpt2, profile_prompts, positions):
    adapter = _adapter(nn_llama.d_model, layers=(0, 1, 2))  # 3 donor layers onto 3 recipient layers
    conv = _converters(tl_llama, nn_gpt2, profile_prompts, method="ridge", match="similarity")
    compiled = cv.compile_paste(adapter, conv, positions=positions, alpha=0.7)
    assert compiled.d_model == nn_gpt2.d_model and compiled.kind == "nodireft"
    batch = nn_gpt2.encode(random_prompts(4, seed=5), padding_side="left")
    with cv.paste(nn_gpt2, adapter, conv, positions=positions, alpha=0.7):
        pasted = nn_gpt2.forward(batch).detach()
        pasted_gen = nn_gpt2.generate(batch, max_new_tokens=4)
    with cv.apply_adapter(nn_gpt2, compiled):
        native = nn_gpt2.forward(batch).detach()
        native_gen = nn_gpt2.generate(batch, max_new_tokens=4)
    mask = batch.attention_mask.bool()
    assert_close(native[mask], pasted[mask], atol=1e-5)
    assert native_gen == pasted_gen


def test_paste_last_only_touches_last_token_and_later(nn_llama, nn_gpt2, profile_prompts):
    adapter = _adapter(nn_llama.d_model)
    conv = _converters(nn_llama, nn_gpt2, profile_prompts, method="ridge")
    batch = nn_gpt2.encode(random_prompts(4, seed=8), padding_side="right")
    clean = nn_gpt2.read(batch, layers=range(3), positions="all")
    with cv.paste(nn_gpt2, adapter, conv, positions="last"):
        edited = nn_gpt2.read(batch, layers=range(3), positions="all")
    first_layer = min(conv.layer_map().values())
    last = batch.last_index
    for layer in range(3):
        for row in range(4):
            before = slice(0, int(last[row]))
            assert torch.equal(edited[layer][row, before], clean[layer][row, before])
            changed = not torch.equal(edited[layer][row, last[row]], clean[layer][row, last[row]])
            assert changed == (layer >= first_layer)


def _hook_counts(access):
    """Forward hooks per module (the TransformerLens bridge keeps permanent hooks of its own)."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in access.torch_module.modules()]


@pytest.mark.parametrize("fixture", ["nn_gpt2", "tl_llama"])
def test_hooks_removed_and_model_unchanged(fixture, request, nn_llama, profile_prompts):
    recipient = request.getfixturevalue(fixture)
    adapter = _adapter(nn_llama.d_model)
    conv = _converters(nn_llama, recipient, profile_prompts, method="ridge")
    batch = recipient.encode(random_prompts(3, seed=4))
    state = {k: v.clone() for k, v in recipient.torch_module.state_dict().items()}
    hooks_before = _hook_counts(recipient)
    before = recipient.forward(batch).detach()
    gen_before = recipient.generate(batch, max_new_tokens=3)
    with pytest.raises(KeyError):
        with cv.paste(recipient, adapter, conv):
            assert not torch.equal(recipient.forward(batch).detach(), before)
            raise KeyError("inside the paste")
    assert recipient.active_edits == {}
    assert _hook_counts(recipient) == hooks_before
    assert torch.equal(recipient.forward(batch).detach(), before)
    assert recipient.generate(batch, max_new_tokens=3) == gen_before
    assert all(torch.equal(state[k], v) for k, v in recipient.torch_module.state_dict().items())


def test_paste_refuses_mismatched_widths(nn_llama, nn_gpt2, profile_prompts):
    conv = _converters(nn_llama, nn_gpt2, profile_prompts, method="ridge")
    with pytest.raises(ValueError, match="d_model=24"):
        with cv.paste(nn_gpt2, _adapter(24), conv):
            pass
    # ValueError from the library's own check; TypeError when the test run's jaxtyping/beartype hook sees it first
    with pytest.raises((ValueError, TypeError), match="everywhere"):
        with cv.paste(nn_gpt2, _adapter(nn_llama.d_model), conv, positions="everywhere"):
            pass


def test_paste_refuses_converters_of_another_recipient(nn_llama, tl_llama, hf_llama, profile_prompts):
    from transformers import LlamaForCausalLM

    assert tl_llama.config_hash == nn_llama.config_hash  # same model, either backend
    config = hf_llama[0].config.__class__.from_dict(hf_llama[0].config.to_dict() | {"num_hidden_layers": 2})
    other = cv.open_model(LlamaForCausalLM(config).eval(), tokenizer=hf_llama[1], name="other")
    conv = _converters(nn_llama, nn_llama, profile_prompts, method="ridge")
    with pytest.raises(ValueError, match="config hash"):
        with cv.paste(other, _adapter(nn_llama.d_model), conv):
            pass


def test_compile_noreft_with_proj_bias_matches_delta():
    from commandv_interp.adapters import NoReFT
    from commandv_interp.adapters.linear_form import linear_parts

    iv = NoReFT(8, 3, proj_bias=True)
    with torch.no_grad():
        iv.proj_layer.bias.normal_()
    w, b, p = linear_parts(iv)
    h = torch.randn(4, 8)
    assert_close((h.double() @ w.T + b) @ p, iv.delta(h).double(), atol=1e-5)
