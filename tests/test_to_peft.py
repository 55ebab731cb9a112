"""pipeline/to_peft.py and pipeline/lora_teacher.py: the LoRA output learns the answers a transfer judged (same
answer span, same fitting/scoring split), in batches half changed and half unchanged, stops by the held-out
criterion within its FLOPs budget (everything counted), and refuses a surrogate that lost its teacher. A transfer
keeps the answers it judged (saved, verified and loaded with its folder), and ``to_peft`` on its own prompts reuses
them without calling the donor. Tiny models: the recipient is the donor in a rotated basis."""

import dataclasses
import json

import pytest
import torch
from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.adapters import load_adapter, save_adapter
from commandv_interp.adapters.steering_vector import SteeringVectorEdit
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.pipeline.agreement import response_sequences
from commandv_interp.manifest import write_manifest
from commandv_interp.pipeline.lora_teacher import check_teacher, scoring_flops, split_answers, teacher_answers
from commandv_interp.pipeline.polish import finetune_flops_estimate
from commandv_interp.pipeline.search import prepare
from commandv_interp.pipeline.result import KIND, load_transfer
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


def _no_generation(*args, **kwargs):
    raise AssertionError("the donor generated")


def _rewrite(folder, edit) -> None:
    """Edit ``transfer.json`` with ``edit(meta)`` and re-seal the manifest (what a folder of another version holds)."""
    meta = json.loads((folder / "transfer.json").read_text())
    edit(meta)
    (folder / "transfer.json").write_text(json.dumps(meta))
    write_manifest(folder, {"kind": KIND, "config": meta["config"]})


def test_the_answers_a_transfer_judged_round_trip_and_split_as_it_split_them(pair, transfer, tmp_path):
    donor, recipient, adapter = pair
    setup = prepare(donor, recipient, adapter, PROMPTS, seed=1)
    kept = transfer.donor_answers
    assert kept == setup.donor_answers and kept.prompts == tuple(PROMPTS) and kept.span == transfer.answer_span
    assert sum(kept.changed) > 0 and kept.flops > 0
    loaded = load_transfer(transfer.save(tmp_path / "t"), recipient)
    assert (tmp_path / "t" / "answers.json").is_file() and loaded.donor_answers == kept
    split = split_answers(loaded.donor_answers, transfer.config.scoring_fraction, transfer.config.seed, reused=True)
    assert split.fitting == tuple(setup.fitting) and split.targets == setup.targets  # the identical split
    assert split.answers == setup.fitting_answers and split.changed == setup.fitting_changed
    assert (split.flops, split.reused) == (0.0, True)


def test_to_peft_on_the_transfers_prompts_reuses_its_answers_without_the_donor(pair, transfer, tmp_path, monkeypatch):
    donor, recipient, _ = pair
    regenerated = dataclasses.replace(transfer, donor_answers=None).to_peft(tmp_path / "b", donor, PROMPTS, steps=4,
                                                                            progress=False)
    assert not regenerated.teacher_reused and regenerated.teacher_flops > 0 and "no answers" in regenerated.teacher_note
    loaded = load_transfer(transfer.save(tmp_path / "t"), recipient)
    monkeypatch.setattr(donor, "generate_ids", _no_generation)
    reused = loaded.to_peft(tmp_path / "a", donor, PROMPTS, steps=4, progress=False)
    assert reused.teacher_reused and reused.teacher_flops == 0.0 and "paid by the transfer" in reused.teacher_note
    assert (reused.prompts, reused.answers, reused.span) == (regenerated.prompts, regenerated.answers,
                                                             regenerated.span)
    assert reused.steps == regenerated.steps == 4
    assert reused.lora.modules.keys() == regenerated.lora.modules.keys()
    for name, (a, b) in reused.lora.modules.items():  # the same answers and seed: the same LoRA, bit for bit
        assert torch.equal(a, regenerated.lora.modules[name][0]) and torch.equal(b, regenerated.lora.modules[name][1])
    assert reused.flops == pytest.approx(regenerated.flops - regenerated.teacher_flops)  # only what to_peft spent
    with pytest.raises(AssertionError, match="the donor generated"):  # other prompts: generated again
        loaded.to_peft(tmp_path / "c", donor, PROMPTS[:-1], steps=4, progress=False)
    monkeypatch.undo()
    other = loaded.to_peft(tmp_path / "c", donor, PROMPTS[:-1], steps=4, progress=False)
    assert not other.teacher_reused and other.teacher_flops > 0 and "prompts differ" in other.teacher_note


def test_tampered_or_mismatched_answers_are_refused(transfer, tmp_path):
    folder = transfer.save(tmp_path / "t")
    data = json.loads((folder / "answers.json").read_text())
    data["adapted"][0] = "sorry ."
    (folder / "answers.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="answers.json"):  # the manifest's digest
        load_transfer(folder)
    _rewrite(folder, lambda meta: None)  # the manifest re-sealed over it: transfer.json's digest still refuses it
    with pytest.raises(ValueError, match=r"answers.json.*not the answers this transfer judged"):
        load_transfer(folder)
    other = dataclasses.replace(transfer.donor_answers, prompts=transfer.donor_answers.prompts[::-1])
    folder = dataclasses.replace(transfer, donor_answers=other).save(tmp_path / "u")
    with pytest.raises(ValueError, match="answers other prompts"):
        load_transfer(folder)


def test_a_folder_saved_before_transfers_kept_answers_loads_and_regenerates(pair, transfer, tmp_path):
    donor, recipient, _ = pair
    folder = dataclasses.replace(transfer, donor_answers=None).save(tmp_path / "old")
    _rewrite(folder, lambda meta: meta.pop("answers_sha256"))
    assert not (folder / "answers.json").exists()
    loaded = load_transfer(folder, recipient)
    assert loaded.donor_answers is None and loaded.answer_span == transfer.answer_span
    result = loaded.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, progress=False)
    assert not result.teacher_reused and result.teacher_flops > 0 and "keeps no answers" in result.teacher_note


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
def test_a_loaded_transfer_of_a_steering_donor_needs_its_teacher_only_without_kept_answers(pair, tmp_path):
    donor, recipient, _ = pair
    torch.manual_seed(4)
    edit = SteeringVectorEdit({1: 3.0 * torch.randn(donor.d_model)})
    made = cv.transfer(donor, recipient, edit, PROMPTS, polish_steps=0, progress=False)
    first = made.to_peft(tmp_path / "lora0", donor, PROMPTS, steps=4, progress=False)
    loaded = load_transfer(made.save(tmp_path / "t"), recipient)
    assert getattr(loaded.donor_adapter, "teacher", None) is None  # the folder keeps the surrogate only
    kept = loaded.to_peft(tmp_path / "lora1", donor, PROMPTS, steps=4, progress=False)  # its answers are the edit's
    assert kept.teacher_reused and kept.answers == first.answers and kept.span == first.span == made.answer_span
    old = load_transfer(dataclasses.replace(made, donor_answers=None).save(tmp_path / "old"), recipient)
    with pytest.raises(ValueError, match="teacher=cv.load_edit"):
        old.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, progress=False)
    again = old.to_peft(tmp_path / "lora", donor, PROMPTS, steps=4, teacher=edit, progress=False)
    assert again.answers == first.answers and again.span == first.span and not again.teacher_reused
