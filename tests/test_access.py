import pytest
import torch

from conftest import assert_close, random_prompts

import commandv_interp as cv
from commandv_interp.access import last_token_index, prompt_position_mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_nnsight_read_matches_hf_hidden_states(nn_llama, hf_llama, side):
    model, _ = hf_llama
    batch = nn_llama.encode(random_prompts(5), padding_side=side)
    got = nn_llama.read(batch, layers=range(nn_llama.n_layers), positions="all")
    with torch.no_grad():
        hs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   output_hidden_states=True).hidden_states
    mask = batch.attention_mask.bool()
    for layer in range(nn_llama.n_layers - 1):  # hidden_states[l + 1] is block l's output...
        assert_close(got[layer][mask], hs[layer + 1][mask], atol=1e-5)
    # ... except the last entry, which already has the final norm applied.
    last = got[nn_llama.n_layers - 1]
    assert_close(model.model.norm(last)[mask], hs[-1][mask], atol=1e-5)
    assert not torch.allclose(last[mask], hs[-1][mask])


@pytest.mark.parametrize("side", ["left", "right"])
def test_backends_agree(nn_llama, tl_llama, side):
    batch = nn_llama.encode(random_prompts(6, seed=3), padding_side=side)
    a = nn_llama.read(batch, layers=[0, 2, 3], positions="last")
    b = tl_llama.read(batch, layers=[0, 2, 3], positions="last")
    for layer in a:
        assert a[layer].shape == (6, nn_llama.d_model)
        assert_close(a[layer], b[layer], atol=1e-4)
    assert tl_llama.n_layers == nn_llama.n_layers and tl_llama.d_model == nn_llama.d_model


def test_last_token_same_for_left_and_right_padding(nn_llama, tl_llama):
    prompts = random_prompts(7, seed=5)
    for access in (nn_llama, tl_llama):
        left = access.read(access.encode(prompts, "left"), layers=[1])[1]
        right = access.read(access.encode(prompts, "right"), layers=[1])[1]
        assert_close(left, right, atol=1e-5)
        # and each row equals the unpadded single-prompt run
        single = torch.cat([access.read(access.encode([p]), layers=[1])[1] for p in prompts])
        assert_close(left, single, atol=1e-5)


def test_gpt2_tuple_or_tensor_blocks(nn_gpt2, hf_gpt2):
    model, _ = hf_gpt2
    batch = nn_gpt2.encode(random_prompts(3), padding_side="right")
    got = nn_gpt2.read(batch, layers=[0, 1])
    with torch.no_grad():
        hs = model(**{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
                   output_hidden_states=True).hidden_states
    idx = batch.last_index
    assert_close(got[1], hs[2][torch.arange(3), idx], atol=1e-5)


def test_positions():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 2, 3]
    assert prompt_position_mask(mask, "all").equal(mask.bool())
    fl = prompt_position_mask(mask, "first_last", k=1).int()
    assert fl.tolist() == [[0, 0, 1, 1], [1, 0, 1, 0], [1, 0, 0, 1]]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


@pytest.mark.parametrize("fixture", ["nn_llama", "tl_llama"])
def test_edit_context_is_removed_and_generation_matches_hf(fixture, request, hf_llama):
    access = request.getfixturevalue(fixture)
    batch = access.encode(random_prompts(4, seed=9), padding_side="left")
    before = access.forward(batch).detach()

    def shift(hidden, ctx):
        return hidden + 1.0

    with pytest.raises(RuntimeError):
        with access.edited({1: shift}):
            edited = access.forward(batch).detach()
            raise RuntimeError("boom")
    assert not torch.allclose(edited, before)
    assert torch.equal(access.forward(batch).detach(), before)
    model, tok = hf_llama
    with torch.no_grad():
        ref = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             max_new_tokens=1, do_sample=False, pad_token_id=0)[:, batch.input_ids.shape[1]:]
    got = access._generate_ids(batch, 1)
    assert torch.equal(got, ref)


def test_open_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        cv.open_model(tmp_path)
    with pytest.raises(ValueError, match="cannot open"):
        cv.open_model(42)


@pytest.mark.parametrize("fixture", ["nn_llama", "tl_llama"])
def test_recorded_states_stop_early_and_equal_a_full_forward(fixture, request):
    """``recorded_states`` stops each pass after its deepest layer; what it records (under an edit, before the edit
    at its own layer) equals what a full forward records, and the edits are gone afterwards."""
    from commandv_interp.access import batches, recorded_states, recording

    model = request.getfixturevalue(fixture)
    prompts = random_prompts(10, seed=3)
    shift = torch.randn(model.d_model)

    def edit():
        return model.edited({0: lambda hidden, ctx: hidden + shift, 2: lambda hidden, ctx: hidden * 2.0})

    got = recorded_states(model, [0, 2], prompts, edit(), batch_size=4)
    with torch.no_grad(), recording(model, [0, 2]) as states, edit():
        for batch in batches(model, prompts, 4):
            model.forward(batch)
    plain = model.read(model.encode(prompts), [0, 2])
    for layer in (0, 2):
        assert got[layer].shape == (10, model.d_model)
        assert_close(got[layer], torch.cat(states[layer]), atol=1e-5)
    assert_close(got[0], plain[0], atol=1e-5)  # recorded before the edit at its own layer
    assert not torch.allclose(got[2], plain[2], atol=1e-3)  # after the edit at layer 0
    assert not model.active_edits
    with pytest.raises(ValueError, match="at least one layer"):
        recorded_states(model, [], prompts)


def test_forward_flops_count_the_blocks_a_pass_runs(nn_llama, hf_llama):
    """Closed form: ``2 · tokens · params``, with the blocks above ``through_layer`` and the untied head left out."""
    from commandv_interp.access import forward_flops

    prompts = random_prompts(5, seed=4)
    tokens = sum(len(ids) for ids in nn_llama.tokenizer(prompts)["input_ids"])
    model = hf_llama[0]
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel()
    assert forward_flops(nn_llama, prompts) == 2.0 * total * tokens
    assert forward_flops(nn_llama, prompts, nn_llama.n_layers - 1) == 2.0 * (total - head) * tokens
    assert forward_flops(nn_llama, prompts, 1) == 2.0 * (total - head - 2 * block) * tokens
    with pytest.raises(ValueError, match="through_layer=4 out of range"):
        forward_flops(nn_llama, prompts, 4)
