"""adapters/steering_vector.py: a steering vector adds ``scale · v`` to the block output at every token (prompt and
generated, padding excluded), as the packages' own application does; it is read from steering-vectors' and repeng's
objects and from a safetensors file; bad inputs are refused. (steering-vectors itself: test_steering_vector_side.py.)"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_close, random_prompts
from safetensors.torch import save_file

from commandv_interp.adapters.edit import apply_edit, edit_kind, load_edit
from commandv_interp.adapters.steering_vector import SteeringVectorEdit, save_steering_file


def _hf_steered(hf_model, layer, vector):
    """What steering-vectors' ``apply`` and repeng's ``set_control`` install: a forward hook adding the vector to
    the block output's hidden states at every position."""
    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    return hf_model.model.layers[layer].register_forward_hook(hook)


def test_steering_equals_a_block_output_hook_over_generation(hf_llama, nn_llama):
    v = torch.randn(nn_llama.d_model)
    edit = SteeringVectorEdit({1: v}, scale=1.5)
    prompts = random_prompts(3, seed=7, min_len=5, max_len=5)  # unpadded: the packages also add at padding
    batch = nn_llama.encode(prompts)
    with apply_edit(nn_llama, edit):
        ours = nn_llama.generate_ids(batch, 12)
        states = nn_llama.read(batch, [0, 1], positions="all")
    plain = nn_llama.read(batch, [0, 1], positions="all")
    assert torch.equal(states[0], plain[0])  # earlier layers untouched
    assert_close(states[1], plain[1] + 1.5 * v, atol=1e-5, rtol=1e-5)
    handle = _hf_steered(hf_llama[0], 1, 1.5 * v)
    try:
        ref = hf_llama[0].generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=12,
                                   do_sample=False, pad_token_id=0)[:, batch.input_ids.shape[1]:]
    finally:
        handle.remove()
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, nn_llama.generate_ids(batch, 12))


def test_padding_is_not_steered(nn_llama):
    v = torch.randn(nn_llama.d_model)
    batch = nn_llama.encode(random_prompts(4, seed=3))  # varying lengths, left-padded
    with apply_edit(nn_llama, SteeringVectorEdit({0: v})):
        states = nn_llama.read(batch, [0], positions="all")[0]
    plain = nn_llama.read(batch, [0], positions="all")[0]
    pad = batch.attention_mask == 0
    assert pad.any()
    assert torch.equal(states[pad], plain[pad])
    assert_close(states[~pad], plain[~pad] + v, atol=1e-5, rtol=1e-5)


def test_objects_of_both_packages_and_the_file_format(tmp_path):
    v = torch.randn(8)
    sv = SimpleNamespace(layer_activations={3: v}, layer_type="decoder_block")  # steering-vectors' attributes
    cv_ = SimpleNamespace(model_type="llama", directions={3: v.numpy().astype(np.float32)})  # repeng's
    for obj in (sv, cv_):
        assert edit_kind(obj) == "steering"
        edit = load_edit(obj, scale=2.0)
        assert edit.layers == [3] and edit.scale == 2.0 and torch.equal(edit.vectors[3], v)
    path = save_steering_file(SteeringVectorEdit({3: v}, scale=-4.0, base_model="llama-6x128"),
                              tmp_path / "s.safetensors")
    again = load_edit(path)
    assert edit_kind(path) == "steering" and again.scale == -4.0 and again.base_model == "llama-6x128"
    assert torch.equal(again.vectors[3], v) and load_edit(path, scale=1.0).scale == 1.0


def test_bad_steering_inputs_are_refused(tmp_path, nn_llama):
    save_file({"layer3": torch.zeros(4)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="'layer3' is not a layer index"):
        load_edit(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="layer_type='attention'"):
        load_edit(SimpleNamespace(layer_activations={0: torch.zeros(4)}, layer_type="attention"))
    with pytest.raises(ValueError, match="d_model=5"):
        with apply_edit(nn_llama, SteeringVectorEdit({0: torch.zeros(5)})):
            pass
    with pytest.raises(ValueError, match="finite"):
        SteeringVectorEdit({0: torch.tensor([float("nan")])})


def test_low_rank_form_equals_the_edit(nn_llama):
    """What a remote trace runs (``act(h·0 + 1) P``) adds the same vector."""
    from commandv_interp.adapters.steering_vector import steering_edits

    v = torch.randn(nn_llama.d_model)
    (form,) = steering_edits(nn_llama, SteeringVectorEdit({2: v}, scale=3.0))[2].low_rank
    h = torch.randn(4, nn_llama.d_model)
    assert_close((h @ form.weight.T + form.bias) @ form.proj, (3.0 * v).expand(4, -1))
