"""cv.transfer from a LoRA or steering-vector donor: the surrogate is pasted, the edit itself is the teacher (its
answers are the targets), on tiny models with an exactly corresponding recipient (the donor in a rotated basis)."""

import copy

import pytest
import torch
from conftest import random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.lora import LoraEdit
from commandv_interp.adapters.steering_vector import SteeringVectorEdit
from commandv_interp.adapters.surrogate import SurrogateAdapter, pasteable
from commandv_interp.pipeline.agreement import donor_targets, greedy_responses


def _random_lora(hf_model, layers=(1, 2), rank=4, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in layers:
        for name in ("self_attn.v_proj", "mlp.down_proj"):
            lin = hf_model.get_submodule(f"model.layers.{layer}.{name}")
            modules[f"model.layers.{layer}.{name}"] = (scale * torch.randn(rank, lin.in_features, generator=g),
                                                       scale * torch.randn(lin.out_features, rank, generator=g))
    return LoraEdit(modules, scaling=2.0)


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


def test_targets_come_from_the_teacher_edit(pair, hf_llama):
    donor, _, _ = pair
    lora = _random_lora(hf_llama[0])
    surrogate = pasteable(donor, lora, random_prompts(40, seed=3), rank=4)
    assert isinstance(surrogate, SurrogateAdapter) and surrogate.teacher is lora
    assert {row["layer"] for row in surrogate.metadata["surrogate_fidelity"]} == {1, 2}
    assert surrogate.metadata["surrogate_flops"] > 0
    prompts = random_prompts(12, seed=5)
    targets = donor_targets(donor, surrogate, prompts, 6, batch_size=4)
    with apply_edit(donor, lora):
        want = greedy_responses(donor, prompts, 6, 4, whole_words=True)
    assert all(t == want[prompts.index(p)] for p, t in zip(targets.prompts, targets.target))


@pytest.mark.slow  # two label-free transfers (about 20 s each on an idle machine)
@pytest.mark.parametrize("kind", ["lora", "steering"])
def test_transfer_accepts_a_lora_and_a_steering_vector(pair, hf_llama, kind):
    donor, recipient, _ = pair
    torch.manual_seed(4)
    edit = (_random_lora(hf_llama[0]) if kind == "lora"
            else SteeringVectorEdit({1: 3.0 * torch.randn(donor.d_model)}))
    before = copy.deepcopy(hf_llama[0].state_dict())
    result = cv.transfer(donor, recipient, edit, random_prompts(40, seed=11), polish_steps=4, progress=False)
    assert isinstance(result.adapter, SurrogateAdapter) and result.adapter.teacher is edit
    table = result.candidates
    plain = float(table[table.candidate == "recipient (no paste)"].criterion.iloc[0])
    assert float(table.criterion.max()) >= plain
    assert not donor.active_edits and all(torch.equal(v, before[k]) for k, v in hf_llama[0].state_dict().items())
    if kind == "lora":  # the surrogate's fit is counted once: passing the fitted surrogate itself costs exactly that less
        again = cv.transfer(donor, recipient, result.donor_adapter, random_prompts(40, seed=11), polish_steps=4,
                            progress=False)
        assert again.choice == result.choice
        assert result.flops - again.flops == pytest.approx(result.donor_adapter.metadata["surrogate_flops"], rel=1e-9)
