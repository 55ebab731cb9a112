"""Stage 6 (pipeline): consumes a recipient, a native recipient :class:`Adapter` (a compiled paste, or a fresh one)
and the donor+adapter's answers to the fitting prompts, produces that adapter *polished*: trained for a few steps to
reproduce the donor+adapter's answers, round by round, each round scored by the donor-agreement criterion.

This is distillation from the donor itself, so it needs no behavior labels: the teacher is the donor with its
adapter, greedy, on the user's unlabeled prompts (the first ``max_new_tokens`` tokens of its answers, re-tokenized
by the recipient's tokenizer; no end of sequence is appended, since the answers are cut). The loss is the
recipient's next-token cross-entropy on those answer tokens, teacher-forced, with the adapter acting at the last
prompt token exactly as :func:`~commandv_interp.pipeline.agreement.score_responses` scores it and as the paste
acts in generation. The recipient is frozen; only the adapter's weights learn (AdamW, constant learning rate).

Started from a compiled paste, a few steps close the gap the linear converters leave (the pasted delta's direction
and scale in the recipient); started from a fresh adapter (``start="scratch"`` in :func:`~commandv_interp.transfer`)
the same procedure is the distillation baseline a paste has to beat. FLOPs are counted as a training run counts them
(``4 · params · tokens``, as :class:`~commandv_interp.adapters.TrainingRecord`), so they compare with a finetune's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter, Intervention, NodiReFT
from commandv_interp.adapters.interventions import make_intervention
from commandv_interp.adapters.linear_form import read_activation
from commandv_interp.pipeline.agreement import at_prompt_end, response_sequences

__all__ = ["Distillation", "balanced", "fresh_adapter", "POLISH_STEPS", "POLISH_ROUND", "POLISH_BATCH", "POLISH_LR"]

POLISH_STEPS = 12  # at most this many optimizer steps ...
POLISH_ROUND = 4  # ... in rounds of this many, each scored on the held-out scoring prompts
POLISH_BATCH = 16  # (prompt, answer) pairs per step, drawn with replacement from the fitting prompts
POLISH_LR = 4e-3  # the zoo's adapter learning rate (AdamW), constant


@dataclass
class Distillation:
    """Trains a copy of ``start`` on the recipient to reproduce ``answers`` to ``prompts`` (the donor+adapter's).

    Attributes:
        recipient: the frozen model the adapter edits (at the last prompt token).
        start: the adapter to start from (not modified: the training runs on a copy).
        prompts, answers: the teacher's (prompt, answer) pairs.
        batch_size, lr, seed: the schedule; ``seed`` draws the batches.
        steps, tokens, flops: what has run so far.
    """

    recipient: ModelAccess
    start: Adapter
    prompts: Sequence[str]
    answers: Sequence[str]
    batch_size: int = POLISH_BATCH
    lr: float = POLISH_LR
    seed: int = 0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.answers) or not self.prompts:
            raise ValueError(f"need one answer per prompt and at least one pair, got {len(self.prompts)} prompts and "
                             f"{len(self.answers)} answers")
        if self.start.d_model != self.recipient.d_model:
            raise ValueError(f"the start adapter has d_model {self.start.d_model}, the recipient "
                             f"{self.recipient.d_model}: start from a compiled paste or a fresh recipient adapter")
        self._interventions = {layer: balanced(iv).to(self.recipient.block_device(layer), torch.float32)
                               .requires_grad_(True) for layer, iv in self.start.interventions.items()}
        params = [p for iv in self._interventions.values() for p in iv.parameters()]
        self._optimizer = torch.optim.AdamW(params, lr=self.lr)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._n_params = sum(p.numel() for p in self.recipient.torch_module.parameters())

    def run(self, steps: int) -> float:
        """``steps`` more optimizer steps; returns the last batch's loss."""
        module = self.recipient.torch_module
        flags = [p.requires_grad for p in module.parameters()]
        loss_value = float("nan")
        try:
            module.requires_grad_(False)
            for _ in range(steps):
                idx = torch.randint(len(self.prompts), (self.batch_size,), generator=self._generator).tolist()
                loss = self._loss([self.prompts[i] for i in idx], [self.answers[i] for i in idx])
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
                for iv in self._interventions.values():
                    iv.project()
                loss_value = float(loss.detach())
                self.losses.append(loss_value)
                self.steps += 1
        finally:
            for p, flag in zip(module.parameters(), flags):
                p.requires_grad_(flag)
        return loss_value

    def _loss(self, prompts: list[str], answers: list[str]) -> torch.Tensor:
        batch, prompt_lens, lengths = response_sequences(self.recipient, prompts, answers)
        per_layer = {layer: [iv.delta] for layer, iv in self._interventions.items()}
        with self.recipient.edited(at_prompt_end(per_layer, prompt_lens, 1.0)):
            logits = self.recipient.forward(batch).float()
        labels = torch.full(batch.input_ids.shape, -100, dtype=torch.long, device=logits.device)
        for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
            labels[i, p:n] = batch.input_ids[i, p:n]
        tokens = int(batch.attention_mask.sum())
        self.tokens += tokens
        self.flops += 4.0 * self._n_params * tokens  # forward and backward through activations, as a finetune
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                                 ignore_index=-100)

    def adapter(self) -> Adapter:
        """The adapter as trained so far (a frozen float32 copy on CPU)."""
        ivs = {layer: copy.deepcopy(iv).cpu().requires_grad_(False) for layer, iv in self._interventions.items()}
        meta = dict(self.start.metadata) | {"polish": {"steps": self.steps, "tokens": self.tokens,
                                                        "flops": self.flops, "lr": self.lr,
                                                        "batch_size": self.batch_size, "seed": self.seed}}
        return Adapter(ivs, positions=self.start.positions, first_last_k=self.start.first_last_k, metadata=meta)


def balanced(iv: Intervention) -> Intervention:
    """A copy of a NodiReFT with a linear activation whose read (``W, b``) and write (``P``) factors are rescaled to
    equal RMS, ``W, b ← c W, c b`` and ``P ← P / c``: the same edit, better conditioned for training. A compiled
    paste puts the converters' scale into its factors (``W' = W A``, ``P' = α P Mᵀ``), so one factor can be many
    times the other; AdamW's steps are about the learning rate per weight whatever its scale, so an unbalanced
    factor would be jolted or frozen. Other kinds are copied unchanged."""
    out = copy.deepcopy(iv)
    if not isinstance(out, NodiReFT) or read_activation(out) != "linear":
        return out
    with torch.no_grad():
        w, p = out.learned_source.weight, out.proj_layer.weight
        w_rms, p_rms = w.float().pow(2).mean().sqrt(), p.float().pow(2).mean().sqrt()
        if w_rms > 0 and p_rms > 0:
            c = (p_rms / w_rms).sqrt()
            w.mul_(c)
            out.learned_source.bias.mul_(c)
            p.div_(c)
    return out


def fresh_adapter(recipient: ModelAccess, layers: Sequence[int], rank: int, seed: int = 0,
                  kind: str = "nodireft") -> Adapter:
    """A freshly initialized recipient adapter at ``layers`` (last prompt token): the start of the distillation
    baseline, which learns the behavior from the donor's answers alone, with no paste."""
    layers = sorted(set(int(layer) for layer in layers))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        interventions = {layer: make_intervention(kind, recipient.d_model, rank) for layer in layers}
    return Adapter(interventions, positions="last",
                   metadata={"model_name": recipient.name, "config_hash": recipient.config_hash, "kind": kind,
                             "rank": rank, "start": "fresh"})
