"""Consumes a donor with its edit (any kind), a recipient and unlabeled prompts, produces a recipient LoRA in PEFT's
format, trained by label-free distillation from the donor+edit's answers, round by round, each round scored on
held-out prompts, within a FLOPs budget.

The teacher is the donor with its edit (a surrogate's teacher: the LoRA or steering vector it stands for), greedy, on
the user's prompts, and its answers are the ones a transfer judges (:mod:`~commandv_interp.pipeline.lora_teacher`: the
transfer's answer span, fitting/scoring split and seed); on a transfer's own prompts they are the answers it kept
(:class:`~commandv_interp.pipeline.lora_teacher.DonorAnswers`), and the donor generates nothing. The student is a
rank-``r`` LoRA on the recipient's block projections (attention and MLP; PEFT's initialization: ``A`` Kaiming-uniform,
``B = 0``, so it starts as the plain recipient). A LoRA acts at every position, so it learns the whole answer: the loss
is the recipient's next-token cross-entropy on every answer token, teacher-forced after the prompt. Each batch draws
half of its pairs from the fitting prompts whose answer the edit changed and half from the others (as the ReFT polish,
:class:`~commandv_interp.pipeline.polish.Distillation`), so the LoRA learns where the behavior does not belong as much
as where it does. The recipient is frozen; AdamW on ``A, B`` only.

Every ``round_steps`` steps the LoRA is scored by donor agreement on the held-out scoring prompts
(:func:`~commandv_interp.pipeline.lora_teacher.lora_criterion`, forward passes only); the distillation stops after
``patience`` rounds without a better criterion, at criterion 1, at ``max_steps``, or when the budget cannot pay for
another step and its round's scoring, and returns the best round. The budget is a share of
:func:`~commandv_interp.pipeline.polish.finetune_flops_estimate` and covers everything spent here: the teacher's
generations (none when a transfer's kept answers are reused: the transfer paid for them), every training step
(``4 · params · tokens``, as a finetune counts them) and every scoring. The folder is written
by :func:`~commandv_interp.adapters.lora.save_peft_lora` and loads with
``peft.PeftModel.from_pretrained(recipient_hf_model, folder)`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.lora import LoraEdit, block_modules, lora_applied, projections, save_peft_lora
from commandv_interp.adapters.train import next_token_loss
from commandv_interp.pipeline.agreement import answer_labels, response_sequences
from commandv_interp.pipeline.lora_teacher import (DonorAnswers, TeacherAnswers, check_teacher, lora_criterion,
                                                   scoring_flops, teacher_answers)
from commandv_interp.pipeline.polish import balanced_draw, finetune_flops_estimate, strata

__all__ = ["LoraDistillation", "distill_lora", "to_peft", "LORA_STEPS", "LORA_LR", "LORA_BATCH", "LORA_ROUND",
           "LORA_PATIENCE", "LORA_BUDGET"]

LORA_STEPS = 160  # a cap on the optimizer steps; the budget and the patience stop the distillation first
LORA_LR = 4e-3  # AdamW, constant
LORA_BATCH = 16  # (prompt, answer) pairs per step, drawn with replacement, half changed and half unchanged
LORA_ROUND = 4  # steps per round, each round scored on the held-out scoring prompts
LORA_PATIENCE = 2  # rounds without a better criterion before the distillation stops
LORA_BUDGET = 0.05  # everything (teacher, training, scoring) as a share of the estimated finetune


@dataclass(frozen=True)
class LoraDistillation:
    """A distilled recipient LoRA with its cost.

    Attributes:
        lora: the best round's LoRA.
        prompts, answers: the fitting prompts and the teacher's answers it learned.
        span: the answers' ``(tokens, words)`` (see :class:`~commandv_interp.pipeline.lora_teacher.TeacherAnswers`).
        steps: the best round's optimizer steps; ``tokens`` and ``flops`` count every step run, the teacher and
            every scoring (``flops``), within ``budget_flops``.
        criterion: the best round's held-out donor agreement.
        rounds: one row per scored round: ``steps, criterion, loglik, flops`` (cumulative).
        losses: per step.
        teacher_reused: whether the teacher's answers were a transfer's kept answers (nothing generated).
        teacher_flops: the teacher's generations counted in ``flops`` (0 when reused: the transfer paid for them).
        teacher_note: where the teacher's answers came from, in words.
    """

    lora: LoraEdit
    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    span: tuple[int, int]
    steps: int
    tokens: int
    flops: float
    budget_flops: float
    criterion: float
    rounds: pd.DataFrame
    losses: tuple[float, ...]
    teacher_reused: bool = False
    teacher_flops: float = 0.0
    teacher_note: str = ""


def _fresh(recipient: ModelAccess, targets: Sequence[str] | None, rank: int,
           seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's initialization of a LoRA on every block projection whose leaf name is in ``targets``."""
    leaves = set(block_modules(recipient) if targets is None else targets)
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in projections(recipient).items():
        if name.rsplit(".", 1)[-1] not in leaves:
            continue
        n_in, n_out = ((module.in_features, module.out_features) if isinstance(module, torch.nn.Linear)
                       else tuple(module.weight.shape))
        bound = 1 / math.sqrt(n_in)  # kaiming_uniform_(a=√5) on an r × in matrix
        a = (torch.rand(rank, n_in, generator=generator) * 2 - 1) * bound
        device = module.weight.device
        modules[name] = (a.to(device).requires_grad_(True), torch.zeros(n_out, rank, device=device, requires_grad=True))
    if not modules:
        raise ValueError(f"no block projection of {recipient.name!r} is named {sorted(leaves)}; its projections are "
                         f"{block_modules(recipient)}")
    return modules


def _snapshot(recipient: ModelAccess, modules: dict) -> LoraEdit:
    """The LoRA as trained so far (a float32 copy on CPU), in PEFT's layout for the recipient."""
    trained = {name: (a.detach().cpu().clone(), b.detach().cpu().clone()) for name, (a, b) in modules.items()}
    config = {"fan_in_fan_out": any(type(m).__name__ == "Conv1D" for n, m in projections(recipient).items()
                                    if n in trained)}
    return LoraEdit(trained, 1.0, recipient.name, config)


class _Trainer:
    """AdamW steps on a LoRA over stratified batches of the teacher's (prompt, answer) pairs, with their FLOPs."""

    def __init__(self, recipient: ModelAccess, modules: dict, teacher: TeacherAnswers, batch_size: int, lr: float,
                 seed: int) -> None:
        self.recipient, self.modules, self.teacher, self.batch_size = recipient, modules, teacher, batch_size
        self.optimizer = torch.optim.AdamW([t for ab in modules.values() for t in ab], lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.n_params = sum(p.numel() for p in recipient.torch_module.parameters())
        self.strata = strata(teacher.changed, len(teacher.fitting))
        self.steps, self.tokens, self.flops, self.losses = 0, 0, 0.0, []

    def _draw(self) -> list[int]:
        return balanced_draw(self.strata, self.batch_size, self.generator)

    def run(self, steps: int, flops_limit: float) -> int:
        """Up to ``steps`` steps, stopping before one that would take ``flops`` past ``flops_limit``; returns the
        steps run."""
        done = 0
        for _ in range(steps):
            idx = self._draw()
            batch, prompt_lens, lengths = response_sequences(
                self.recipient, [self.teacher.fitting[i] for i in idx], [self.teacher.answers[i] for i in idx])
            n_tokens = int(batch.attention_mask.sum())
            if self.flops + 4.0 * self.n_params * n_tokens > flops_limit:
                break
            with lora_applied(self.recipient, LoraEdit(self.modules, 1.0)):
                logits = self.recipient.forward(batch).float()
            loss = next_token_loss(logits, answer_labels(batch, prompt_lens, lengths))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.losses.append(float(loss.detach()))
            self.steps, self.tokens, self.flops, done = (self.steps + 1, self.tokens + n_tokens,
                                                         self.flops + 4.0 * self.n_params * n_tokens, done + 1)
        return done


def distill_lora(donor_model: ModelAccess, recipient_model: ModelAccess, edit: Edit, prompts: Sequence[str],
                 rank: int = 8, max_steps: int = LORA_STEPS, lr: float = LORA_LR, batch_size: int = LORA_BATCH,
                 answer_span: tuple[int, int] | None = None, budget: float = LORA_BUDGET,
                 round_steps: int = LORA_ROUND, patience: int = LORA_PATIENCE, scoring_fraction: float = 0.25,
                 target_modules: Sequence[str] | None = None, seed: int = 0, progress: bool = True,
                 answers: DonorAnswers | None = None) -> LoraDistillation:
    """Train a recipient LoRA to answer ``prompts`` as the donor with ``edit`` does (see the module doc).

    Args:
        donor_model, recipient_model: the two models.
        edit: the donor's edit (ReFT adapter, LoRA, steering vector, or a transfer's surrogate: its teacher).
        prompts: unlabeled prompts of the edit's task (a quarter held out for the rounds' scoring).
        rank: the LoRA's rank (``lora_alpha = rank``: scaling 1).
        max_steps, lr, batch_size, round_steps, patience, seed: the schedule (``seed`` also sets the split).
        answer_span: a transfer's ``(tokens, words)``: the answers are generated and cut as it judged them (None:
            derived as a transfer derives it).
        budget: the FLOPs of everything, as a share of the estimated finetune.
        scoring_fraction: the share of prompts held out for scoring (a transfer's ``config.scoring_fraction``).
        target_modules: leaf names of the recipient's projections (default: every projection in its blocks).
        answers: the donor+edit's answers a transfer judged and kept
            (:attr:`~commandv_interp.pipeline.result.Transfer.donor_answers`): when they answer exactly ``prompts``
            they are split as the transfer split them and the donor generates nothing (``edit`` is then unused);
            otherwise the answers are generated again, and ``teacher_note`` says so.

    Raises:
        ValueError: bad settings, an edit that changes no answer, a surrogate without its teacher, or a budget that
            pays for no round.
    """
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    prompts = list(dict.fromkeys(prompts))
    if len(prompts) < 4 or rank < 1 or max_steps < 1 or round_steps < 1 or patience < 1 or not budget > 0:
        raise ValueError(f"need at least 4 prompts, rank, max_steps, round_steps, patience >= 1 and budget > 0; got "
                         f"{len(prompts)} prompts, rank={rank!r}, max_steps={max_steps!r}, "
                         f"round_steps={round_steps!r}, patience={patience!r}, budget={budget!r}")
    reusable = answers is not None and answers.prompts == tuple(prompts)
    if not reusable:
        check_teacher(edit)
    with torch.no_grad():
        teacher = teacher_answers(donor, recipient, edit, prompts, answer_span, scoring_fraction, seed,
                                  kept=answers if reusable else None)
    budget_flops = budget * finetune_flops_estimate(recipient, teacher.fitting, teacher.answers)
    trainer = _Trainer(recipient, _fresh(recipient, target_modules, rank, seed), teacher, batch_size, lr, seed)
    best, rounds, spent = _rounds(trainer, budget_flops, max_steps, round_steps, patience, progress)
    if best is None:
        raise ValueError(f"budget={budget!r} ({budget_flops:.3g} FLOPs) pays for the teacher's answers "
                         f"({teacher.flops:.3g}) but not for one step and its scoring; raise budget")
    return LoraDistillation(best[0], teacher.fitting, teacher.answers, teacher.span, best[3], trainer.tokens, spent,
                            budget_flops, best[1], pd.DataFrame(rounds), tuple(trainer.losses), teacher.reused,
                            teacher.flops, _note(answers, teacher.reused))


def _note(answers: DonorAnswers | None, reused: bool) -> str:
    if reused:
        return "the answers the transfer judged, kept with it (their generation was paid by the transfer)"
    if answers is not None:
        return "the prompts differ from the transfer's: the donor+edit's answers were generated again"
    return "the donor+edit's answers were generated"


def _rounds(trainer: _Trainer, budget_flops: float, max_steps: int, round_steps: int, patience: int,
            progress: bool) -> tuple[tuple | None, list[dict], float]:
    """Train and score round after round (see the module doc); returns the best round ``(lora, criterion, loglik,
    steps)`` (None when the budget paid for no round), every round's row and the FLOPs spent, the teacher's
    included."""
    recipient, teacher = trainer.recipient, trainer.teacher
    score_cost = scoring_flops(recipient, teacher.targets)
    spent, rounds, best, stale = teacher.flops, [], None, 0
    module = recipient.torch_module
    flags = [p.requires_grad for p in module.parameters()]
    bar = tqdm(total=max_steps, desc="distill LoRA", disable=not progress)
    try:
        module.requires_grad_(False)
        while trainer.steps < max_steps and stale < patience:
            before = trainer.flops
            done = trainer.run(min(round_steps, max_steps - trainer.steps),
                               trainer.flops + budget_flops - spent - score_cost)
            if not done:
                break
            spent += trainer.flops - before + score_cost
            bar.update(done)
            lora = _snapshot(recipient, trainer.modules)
            criterion, loglik = lora_criterion(recipient, teacher.targets, lora)
            rounds.append({"steps": trainer.steps, "criterion": criterion, "loglik": loglik, "flops": spent})
            if best is None or (criterion, loglik) > (best[1], best[2]):
                best, stale = (lora, criterion, loglik, trainer.steps), 0
            else:
                stale += 1
    finally:
        bar.close()
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
    return best, rounds, spent


def to_peft(donor_model: ModelAccess, recipient_model: ModelAccess, edit: Edit, prompts: Sequence[str],
            folder: str | Path, rank: int = 8, max_steps: int = LORA_STEPS, seed: int = 0,
            answer_span: tuple[int, int] | None = None, budget: float = LORA_BUDGET, scoring_fraction: float = 0.25,
            progress: bool = True, answers: DonorAnswers | None = None) -> LoraDistillation:
    """:func:`distill_lora` and write the LoRA to ``folder`` in PEFT's format (see the module doc).

    Example:
        >>> to_peft(donor, recipient, zoo.load_adapter("llama-6x128", "refusal"), prompts, "lora")  # doctest: +SKIP
        >>> peft.PeftModel.from_pretrained(recipient_hf, "lora")  # doctest: +SKIP
    """
    result = distill_lora(donor_model, recipient_model, edit, prompts, rank, max_steps, answer_span=answer_span,
                          budget=budget, scoring_fraction=scoring_fraction, seed=seed, progress=progress,
                          answers=answers)
    save_peft_lora(result.lora, folder)
    return result
