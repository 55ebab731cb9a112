"""Consumes a donor with its edit (any kind), a recipient and unlabeled prompts, produces a recipient LoRA in PEFT's
format, trained by label-free distillation from the donor+edit's answers.

The teacher is the donor with its edit (a surrogate's teacher: the LoRA or steering vector it stands for), greedy, on
the user's prompts, as in :func:`~commandv_interp.transfer`'s polish. The student is a rank-``r`` LoRA on the
recipient's block projections (attention and MLP; PEFT's initialization: ``A`` Kaiming-uniform, ``B = 0``, so it
starts as the plain recipient). A LoRA acts at every position, so it learns the whole answer: the loss is the
recipient's next-token cross-entropy on every answer token, teacher-forced after the prompt. The recipient is
frozen; AdamW on ``A, B`` only. The folder is written by :func:`~commandv_interp.adapters.lora.save_peft_lora` and
loads with ``peft.PeftModel.from_pretrained(recipient_hf_model, folder)`` alone. FLOPs are counted as a finetune's,
``4 · params · tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters.edit import Edit
from commandv_interp.adapters.lora import LoraEdit, block_modules, lora_applied, projections, save_peft_lora
from commandv_interp.adapters.train import next_token_loss
from commandv_interp.pipeline.agreement import answer_labels, greedy_responses, response_sequences, teaching
from commandv_interp.pipeline.search import generation_flops

__all__ = ["LoraDistillation", "distill_lora", "to_peft", "LORA_STEPS", "LORA_LR", "LORA_BATCH"]

LORA_STEPS = 80  # optimizer steps of the distillation
LORA_LR = 2e-3  # AdamW, constant
LORA_BATCH = 16  # (prompt, answer) pairs per step, drawn with replacement


@dataclass(frozen=True)
class LoraDistillation:
    """A distilled recipient LoRA with its cost: ``lora``, the ``answers`` it learned, ``steps``, ``tokens`` and
    ``flops`` (the teacher's generation plus training), and the per-step ``losses``."""

    lora: LoraEdit
    answers: tuple[str, ...]
    steps: int
    tokens: int
    flops: float
    losses: tuple[float, ...]


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


def _answer_loss(recipient: ModelAccess, modules: dict, prompts: list[str], answers: list[str]
                 ) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy on every answer token, teacher-forced after the prompt, under the LoRA ``modules``;
    and the batch's token count."""
    batch, prompt_lens, lengths = response_sequences(recipient, prompts, answers)
    with lora_applied(recipient, LoraEdit(modules, 1.0)):
        logits = recipient.forward(batch).float()
    return next_token_loss(logits, answer_labels(batch, prompt_lens, lengths)), int(batch.attention_mask.sum())


def distill_lora(donor_model: ModelAccess, recipient_model: ModelAccess, edit: Edit, prompts: Sequence[str],
                 rank: int = 8, steps: int = LORA_STEPS, lr: float = LORA_LR, batch_size: int = LORA_BATCH,
                 max_new_tokens: int = 8, target_modules: Sequence[str] | None = None, seed: int = 0,
                 progress: bool = True) -> LoraDistillation:
    """Train a recipient LoRA to answer ``prompts`` as the donor with ``edit`` does (see the module doc).

    Args:
        donor_model, recipient_model: the two models.
        edit: the donor's edit (ReFT adapter, LoRA, steering vector, or a transfer's surrogate: its teacher).
        prompts: unlabeled prompts of the edit's task.
        rank: the LoRA's rank (``lora_alpha = rank``: scaling 1).
        steps, lr, batch_size, seed: the schedule.
        max_new_tokens: answer length the teacher generates.
        target_modules: leaf names of the recipient's projections (default: every projection in its blocks).
    """
    donor, recipient = open_model(donor_model), open_model(recipient_model)
    prompts = list(dict.fromkeys(prompts))
    if not prompts or rank < 1 or steps < 1:
        raise ValueError(f"need prompts, rank >= 1 and steps >= 1; got {len(prompts)} prompts, rank={rank!r}, "
                         f"steps={steps!r}")
    with torch.no_grad(), teaching(donor, edit):
        answers = greedy_responses(donor, prompts, max_new_tokens, 32, whole_words=True)
    flops = generation_flops(donor, prompts, max_new_tokens)
    modules = _fresh(recipient, target_modules, rank, seed)
    optimizer = torch.optim.AdamW([t for ab in modules.values() for t in ab], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in recipient.torch_module.parameters())
    module = recipient.torch_module
    flags = [p.requires_grad for p in module.parameters()]
    losses, tokens = [], 0
    try:
        module.requires_grad_(False)
        for _ in tqdm(range(steps), desc="distill LoRA", disable=not progress):
            idx = torch.randint(len(prompts), (batch_size,), generator=generator).tolist()
            loss, n_tokens = _answer_loss(recipient, modules, [prompts[i] for i in idx], [answers[i] for i in idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            tokens += n_tokens
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
    trained = {name: (a.detach().cpu().clone(), b.detach().cpu().clone()) for name, (a, b) in modules.items()}
    config = {"fan_in_fan_out": any(type(m).__name__ == "Conv1D" for n, m in projections(recipient).items()
                                    if n in trained)}
    lora = LoraEdit(trained, 1.0, recipient.name, config)
    return LoraDistillation(lora, tuple(answers), steps, tokens, flops + 4.0 * n_params * tokens, tuple(losses))


def to_peft(donor_model: ModelAccess, recipient_model: ModelAccess, edit: Edit, prompts: Sequence[str],
            folder: str | Path, rank: int = 8, steps: int = LORA_STEPS, seed: int = 0, max_new_tokens: int = 8,
            progress: bool = True) -> LoraDistillation:
    """:func:`distill_lora` and write the LoRA to ``folder`` in PEFT's format (see the module doc).

    Example:
        >>> to_peft(donor, recipient, zoo.load_adapter("llama-6x128", "refusal"), prompts, "lora")  # doctest: +SKIP
        >>> peft.PeftModel.from_pretrained(recipient_hf, "lora")  # doctest: +SKIP
    """
    result = distill_lora(donor_model, recipient_model, edit, prompts, rank, steps, max_new_tokens=max_new_tokens,
                          seed=seed, progress=progress)
    save_peft_lora(result.lora, folder)
    return result
