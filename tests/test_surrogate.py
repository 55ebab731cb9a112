"""adapters/surrogate.py: the least-squares NodiReFT surrogate equals the edit exactly when the edit is a linear
last-token NodiReFT (an oracle), recovers a steering vector at rank 1, and reports per-layer fidelity."""

import pytest
import torch
from conftest import assert_close, random_adapter, random_prompts

from commandv_interp.access import forward_flops
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.steering_vector import SteeringVectorEdit
from commandv_interp.adapters.surrogate import SurrogateAdapter, edit_deltas, fit_surrogate, teacher_of


def test_surrogate_of_a_nodireft_is_that_nodireft(nn_llama):
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.6, seed=3, rank=4)
    prompts = random_prompts(64, seed=11)  # 48 fitting prompts > d_model + 1 = 33: the fit is determined
    result = fit_surrogate(nn_llama, adapter, prompts, rank=4, heldout=0.25, max_new_tokens=4)
    surrogate = result.adapter
    assert isinstance(surrogate, SurrogateAdapter) and teacher_of(surrogate) is adapter
    assert surrogate.layers == [0, 2] and surrogate.positions == "last"
    h = torch.randn(20, nn_llama.d_model)
    for layer in (0, 2):
        assert_close(surrogate.interventions[layer].delta(h), adapter.interventions[layer].delta(h), atol=1e-4,
                     rtol=1e-4)  # float32 reads of the states: the fit is exact up to their rounding
    assert (result.fidelity.r2 > 0.99999).all() and (result.fidelity.explained > 0.99999).all()
    assert result.agreement == 1.0 and (result.fidelity.agreement == 1.0).all()
    assert (result.fidelity.edit_changes > 0).all()  # the agreement is not that of an edit that changes nothing
    batch = nn_llama.encode(random_prompts(6, seed=99))
    with apply_edit(nn_llama, adapter):
        expected = nn_llama.forward(batch)
    with apply_edit(nn_llama, surrogate):
        assert_close(nn_llama.forward(batch), expected, atol=1e-4, rtol=1e-4)


def test_surrogate_of_a_steering_vector_is_a_rank_one_constant(nn_llama):
    v = torch.randn(nn_llama.d_model)
    edit = SteeringVectorEdit({1: v}, scale=0.7)
    result = fit_surrogate(nn_llama, edit, random_prompts(24, seed=4), rank=1, max_new_tokens=3)
    iv = result.adapter.interventions[1]
    h = torch.randn(5, nn_llama.d_model)
    assert_close(iv.delta(h), (0.7 * v).expand(5, -1), atol=1e-5, rtol=1e-5)
    assert result.fidelity.r2.isna().all()  # a constant delta has no variance to explain
    assert (result.fidelity.explained > 0.99999).all()


def test_local_deltas_of_a_lora_like_edit_are_block_local(nn_llama):
    """x at a layer is the state with the edit at earlier layers only: for a steering vector at layers 0 and 2 the
    delta at 2 is exactly its vector, though the state there already carries the one from layer 0."""
    v0, v2 = torch.randn(nn_llama.d_model), torch.randn(nn_llama.d_model)
    edit = SteeringVectorEdit({0: v0, 2: v2})
    x, d = edit_deltas(nn_llama, edit, random_prompts(5, seed=8))
    assert_close(d[2], v2.double().expand(5, -1), atol=1e-5, rtol=1e-5)
    plain = nn_llama.read(nn_llama.encode(random_prompts(5, seed=8)), [2])[2].double()
    assert not torch.allclose(x[2], plain, atol=1e-3)  # the layer-0 vector moved the state at layer 2


def test_surrogate_flops_are_what_its_passes_ran(nn_llama, monkeypatch):
    """``surrogate_flops`` equals the FLOPs of the reads and generations the fit actually made, each read counted as
    far as it ran (a read stops after its last layer) and each generation as a cached one."""
    edit = SteeringVectorEdit({0: torch.randn(nn_llama.d_model), 2: torch.randn(nn_llama.d_model)}, scale=0.5)
    prompts = random_prompts(20, seed=6)
    per_token = {layer: forward_flops(nn_llama, ["a"], layer) / len(nn_llama.tokenizer(["a"])["input_ids"][0])
                 for layer in (None, *range(nn_llama.n_layers))}
    ran = []
    read, generate = nn_llama.read, nn_llama.generate_ids

    def counted_read(batch, layers, *args, **kwargs):
        ran.append(per_token[max(layers)] * float(batch.attention_mask.sum()))
        return read(batch, layers, *args, **kwargs)

    def counted_generate(batch, max_new_tokens=32, *args, **kwargs):
        rows = batch.attention_mask.shape[0]
        ran.append(per_token[None] * (float(batch.attention_mask.sum()) + max_new_tokens * rows))
        return generate(batch, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(nn_llama, "read", counted_read)
    monkeypatch.setattr(nn_llama, "generate_ids", counted_generate)
    result = fit_surrogate(nn_llama, edit, prompts, rank=1, max_new_tokens=3, batch_size=8)
    assert len(ran) == 3 * 3 + (2 + 3) * 1  # 3 batches × (edited + 2 layers) reads; 5 generations of 5 held-out
    assert result.adapter.metadata["surrogate_flops"] == pytest.approx(sum(ran), rel=1e-9)
