"""pipeline/to_peft.py and pipeline/lora_teacher.py: the LoRA output learns the answers a transfer judged (same
answer span, same fitting/scoring split), in batches half changed and half unchanged, stops by the held-out
criterion within its FLOPs budget (everything counted), and refuses a surrogate that lost its teacher.
Tiny models: the recipient is the donor in a rotated basis."""

import dataclasses

import pytest
import torch
from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.adapters import load_adapter, save_adapter
from commandv_interp.adapters.steering_vector import SteeringVectorEdit
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.pipeline.agreement import response_sequences
from commandv_interp.pipeline.lora_teacher import check_teacher, scoring_flops, teacher_answers
from commandv_interp.pipeline.polish import finetune_flops_estimate
from commandv_interp.pipeline.search import prepare
from commandv_interp.pipeline.to_peft import _Trainer, distill_lora

PROMPTS = random_prompts(32, seed=11)


def n_params(model) -> int:
    return sum(p.numel() for p in model.torch_module.parameters())


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


@pytest.fixture(scope="module")
def transfer(pair):
    donor, recipient, adapter = pair
    return cv.transfer(donor, recipient, adapter, PROMPTS, polish_steps=0, seed=1, progress=False)


def test_the_lora_learns_the_transfers_cut_answers_and_is_scored_on_its_scoring_prompts(pair, transfer, tmp_path):
    donor, recipient, adapter = pair
    setup = prepare(donor, recipient, adapter, PROMPTS, seed=1)  # what the transfer judged its candidates by
    assert transfer.answer_span == (setup.answer_tokens, setup.answer_words) and setup.answer_words > 0
    result = transfer.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, progress=False)
    assert result.span == transfer.answer_span
    assert result.prompts == tuple(setup.fitting) and result.answers == setup.fitting_answers
    teacher = teacher_answers(donor, recipient, adapter, PROMPTS, transfer.answer_span, seed=1)
    assert teacher.targets == setup.targets and teacher.changed == setup.fitting_changed
    derived = teacher_answers(donor, recipient, adapter, PROMPTS, None, seed=1)  # no span: derived the same way
    assert (derived.answers, derived.span) == (setup.fitting_answers, transfer.answer_span)
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_batches_draw_half_changed_and_half_unchanged(pair):
    donor, recipient, adapter = pair
    teacher = teacher_answers(donor, recipient, adapter, PROMPTS)
    planted = tuple(i % 5 == 0 for i in range(len(teacher.fitting)))  # a minority changed
    teacher = dataclasses.replace(teacher, changed=planted)
    dummy = {"m": (torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True))}  # drawing only
    trainer = _Trainer(recipient, dummy, teacher, 16, 1e-3, 0)
    for _ in range(5):
        flags = [teacher.changed[i] for i in trainer._draw()]
        assert len(flags) == 16 and sum(flags) == 8


def test_rounds_stop_within_the_budget_and_keep_the_best(pair):
    donor, recipient, adapter = pair
    result = distill_lora(donor, recipient, adapter, PROMPTS, rank=4, budget=0.05, round_steps=2, patience=2,
                          progress=False)
    teacher = teacher_answers(donor, recipient, adapter, PROMPTS)
    budget = 0.05 * finetune_flops_estimate(recipient, teacher.fitting, teacher.answers)
    assert result.budget_flops == pytest.approx(budget)
    rounds = result.rounds
    assert teacher.flops < rounds.flops.iloc[0] and result.flops == rounds.flops.iloc[-1] <= budget
    assert result.criterion == rounds.criterion.max() and result.steps in set(rounds.steps)
    improved = rounds.criterion.cummax().diff().fillna(1) > 0
    by_patience = len(rounds) >= 3 and not improved.iloc[-2:].any()
    _, _, lengths = response_sequences(recipient, teacher.fitting, teacher.answers)
    dearest_round = scoring_flops(recipient, teacher.targets) + 4.0 * n_params(recipient) * 16 * max(lengths)
    assert by_patience or budget - result.flops < dearest_round  # stopped by patience or by the budget
    with pytest.raises(ValueError, match="raise budget"):
        distill_lora(donor, recipient, adapter, PROMPTS, rank=4, budget=teacher.flops * 1.01 / (budget / 0.05),
                     progress=False)


def test_a_surrogate_without_its_teacher_is_refused(pair, tmp_path):
    donor, _, _ = pair
    torch.manual_seed(4)
    edit = SteeringVectorEdit({1: 3.0 * torch.randn(donor.d_model)})
    surrogate = pasteable(donor, edit, random_prompts(24, seed=3), rank=2)
    check_teacher(surrogate)  # it has its teacher
    check_teacher(random_adapter(donor.d_model))  # a plain ReFT adapter is its own teacher
    save_adapter(surrogate, tmp_path / "s")  # what a transfer folder keeps of it
    with pytest.raises(ValueError, match=r"surrogate of a 'steering' edit.*teacher=cv.load_edit"):
        check_teacher(load_adapter(tmp_path / "s"))


@pytest.mark.slow  # a label-free transfer from a steering vector, saved and loaded (about 10 s)
def test_a_loaded_transfer_of_a_steering_donor_needs_its_teacher(pair, tmp_path):
    from commandv_interp.pipeline import load_transfer

    donor, recipient, _ = pair
    torch.manual_seed(4)
    edit = SteeringVectorEdit({1: 3.0 * torch.randn(donor.d_model)})
    made = cv.transfer(donor, recipient, edit, PROMPTS, polish_steps=0, progress=False)
    loaded = load_transfer(made.save(tmp_path / "t"), recipient)
    assert getattr(loaded.donor_adapter, "teacher", None) is None  # the folder keeps the surrogate only
    with pytest.raises(ValueError, match="teacher=cv.load_edit"):
        loaded.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, progress=False)
    again = loaded.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, teacher=edit, progress=False)
    first = made.to_peft(tmp_path / "lora0", donor, PROMPTS, steps=4, progress=False)
    assert again.answers == first.answers and again.span == first.span == made.answer_span
