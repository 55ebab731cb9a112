"""Consumes a recipient, a native recipient :class:`Adapter` (a compiled paste, or a fresh one)
and the donor+adapter's answers to the fitting prompts, produces that adapter *polished*: trained to reproduce the
donor+adapter's answers, round by round, each round scored by the donor-agreement criterion
(:mod:`~commandv_interp.pipeline.polish_race` runs the rounds: learning rate, patience, budget).

This is distillation from the donor itself, so it needs no behavior labels: the teacher is the donor with its
adapter, greedy, on the user's unlabeled prompts (its answers cut to the behavior's length by
:func:`~commandv_interp.pipeline.agreement.behavior_span`, re-tokenized by the recipient's tokenizer; no end of
sequence is appended). The loss is the recipient's next-token cross-entropy on those answer tokens, teacher-forced,
with the adapter acting at the last prompt token exactly as
:func:`~commandv_interp.pipeline.agreement.score_responses` scores it and as the paste acts in generation. Each batch
draws half of its pairs from the prompts whose answer the adapter changed and half from the others, as the
criterion weighs them. The recipient is frozen; only the adapter's weights learn (AdamW, constant learning rate).

Started from a compiled paste, a few steps close the gap the linear converters leave (the pasted delta's direction
and scale in the recipient); started from a fresh adapter (``start="scratch"`` in :func:`~commandv_interp.transfer`)
the same procedure is the distillation baseline a paste has to beat. FLOPs are counted as a training run counts them
(``4 · params · tokens``, as :class:`~commandv_interp.adapters.TrainingRecord`), so they compare with a finetune's,
and :func:`finetune_flops_estimate` estimates that finetune from the prompts and answers (the budget's unit). Where
the passes start from cached states (:class:`~commandv_interp.pipeline.forced_passes.ForcedPasses`), ``params`` are
those of the blocks above the lowest edited one and the head, and the states are counted once, as computed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from commandv_interp.access import Batch, ModelAccess
from commandv_interp.adapters import Adapter, Intervention, NodiReFT
from commandv_interp.adapters.interventions import make_intervention
from commandv_interp.adapters.linear_form import read_activation
from commandv_interp.adapters.train import next_token_loss
from commandv_interp.pipeline.agreement import answer_labels, at_prompt_end, response_sequences
from commandv_interp.pipeline.forced_passes import ForcedPasses

__all__ = ["Distillation", "balanced", "balanced_draw", "strata", "fresh_adapter", "finetune_flops_estimate", "POLISH_STEPS", "POLISH_ROUND",
           "POLISH_BATCH", "POLISH_LR", "POLISH_BUDGET", "LR_GRID", "PATIENCE", "FINETUNE_SEQUENCES"]

POLISH_STEPS = 256  # a cap on the optimizer steps of the continued start; the budget and the patience stop it first
POLISH_ROUND = 4  # steps per round, each round scored on the held-out scoring prompts
POLISH_BATCH = 16  # (prompt, answer) pairs per step, drawn with replacement, half changed and half unchanged
POLISH_LR = 4e-3  # the zoo's adapter learning rate (AdamW, constant): the middle of the grid searched
LR_GRID = (1.6e-2, 4e-3)  # learning rates the first round tries, in this order, every start alike (a lower one only
# when no trial at the higher ones raised its start's criterion: polish_race.race)
PATIENCE = 2  # rounds without a better criterion before the polish stops
POLISH_BUDGET = 0.05  # the polish's FLOPs (sweep, rounds, their scoring) as a share of the estimated finetune
FINETUNE_SEQUENCES = 400 * 32  # the estimated finetune: the zoo's shortest adapter recipe (400 steps of 32 answers)


@dataclass
class Distillation:
    """Trains a copy of ``start`` on the recipient to reproduce ``answers`` to ``prompts`` (the donor+adapter's).

    Attributes:
        recipient: the frozen model the adapter edits (at the last prompt token).
        start: the adapter to start from (not modified: the training runs on a copy).
        prompts, answers: the teacher's (prompt, answer) pairs.
        changed: per pair, whether the adapter changed the donor's answer; when both kinds occur each batch draws
            half of its pairs from each (the criterion weighs them alike; empty: uniform draws).
        batch_size, lr, seed: the schedule; ``seed`` draws the batches.
        steps, tokens, flops: what has run so far.
    """

    recipient: ModelAccess
    start: Adapter
    prompts: Sequence[str]
    answers: Sequence[str]
    changed: Sequence[bool] = ()
    batch_size: int = POLISH_BATCH
    lr: float = POLISH_LR
    seed: int = 0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    losses: list[float] = field(default_factory=list)
    passes: ForcedPasses | None = None  # over ``prompts``: steps run from their prefix states where it keeps them
    # (None: whole passes, a ForcedPasses(cache=False) made here)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.answers) or not self.prompts:
            raise ValueError(f"need one answer per prompt and at least one pair, got {len(self.prompts)} prompts and "
                             f"{len(self.answers)} answers")
        if self.changed and len(self.changed) != len(self.prompts):
            raise ValueError(f"changed needs one flag per prompt, got {len(self.changed)} for {len(self.prompts)}")
        if self.start.d_model != self.recipient.d_model:
            raise ValueError(f"the start adapter has d_model {self.start.d_model}, the recipient "
                             f"{self.recipient.d_model}: start from a compiled paste or a fresh recipient adapter")
        if not (isinstance(self.lr, float | int) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.passes is None:
            self.passes = ForcedPasses(self.recipient, self.prompts, cache=False)
        elif self.passes.prompts != tuple(self.prompts):
            raise ValueError("passes must be over the distillation's prompts, in their order")
        self._interventions = {layer: balanced(iv).to(self.recipient.block_device(layer), torch.float32)
                               .requires_grad_(True) for layer, iv in self.start.interventions.items()}
        params = [p for iv in self._interventions.values() for p in iv.parameters()]
        self._optimizer = torch.optim.AdamW(params, lr=self.lr)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._lowest = min(self._interventions)  # the passes start from this block's output where they can
        self._strata = strata(self.changed, len(self.prompts))
        self._mean_tokens: float | None = None

    def run(self, steps: int, flops_limit: float | None = None) -> float:
        """Up to ``steps`` more optimizer steps, stopping before a step that would take ``flops`` past
        ``flops_limit``; returns the last batch's loss (NaN when no step ran)."""
        module = self.recipient.torch_module
        flags = [p.requires_grad for p in module.parameters()]
        loss_value = float("nan")
        try:
            module.requires_grad_(False)
            for _ in range(steps):
                batch, rows = self._next_batch()
                cost = self.step_flops(batch, rows)
                if flops_limit is not None and self.flops + cost > flops_limit:
                    break
                loss = self._loss(batch, rows)
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

    def next_indices(self) -> list[int]:
        """The pairs of the next batch (by index), drawn with replacement, an equal share from each stratum."""
        return balanced_draw(self._strata, self.batch_size, self._generator)

    def _next_batch(self) -> tuple[tuple[Batch, list[int], list[int]], list[int]]:
        """The next batch's sequences, prompt lengths and lengths (from the last prompt token on where
        :attr:`passes` keeps prefix states), and its rows."""
        idx = self.next_indices()
        return self.passes.sequences(idx, [self.answers[i] for i in idx]), idx

    def expected_step_flops(self) -> float:
        """A step's FLOPs on a batch of average pairs (what a round is budgeted at before its batches are drawn;
        the states computed once for the passes not included)."""
        if self._mean_tokens is None:
            _, _, lengths = self.passes.sequences(range(len(self.prompts)), self.answers)
            self._mean_tokens = sum(lengths) / len(lengths)
        return 2.0 * self.passes.token_cost(self._lowest) * self.batch_size * self._mean_tokens

    def step_flops(self, batch: tuple[Batch, list[int], list[int]], rows: Sequence[int]) -> float:
        """A training step's FLOPs on ``batch`` (its ``rows``): the states its passes compute first, then forward and
        backward through activations of the blocks the pass runs, as a finetune counts them (``4 · params ·
        tokens``, the params of the blocks above the lowest edited one where the passes start there)."""
        before, forward = self.passes.costs(rows, batch[0], self._lowest)
        return before + 2.0 * forward

    def _loss(self, prepared: tuple[Batch, list[int], list[int]], rows: list[int] | None = None) -> torch.Tensor:
        """The loss on a batch of :meth:`_next_batch` (its ``rows`` given: run through :attr:`passes`) or of
        :func:`response_sequences` (no rows: a whole pass)."""
        batch, prompt_lens, lengths = prepared
        per_layer = {layer: [iv.delta] for layer, iv in self._interventions.items()}
        states0, passes0 = self.passes.state_flops, self.passes.pass_flops
        with self.recipient.edited(at_prompt_end(per_layer, prompt_lens, 1.0)):
            logits = (self.passes.logits(rows, batch) if rows is not None else self.recipient.forward(batch)).float()
        self.tokens += int(batch.attention_mask.sum())
        self.flops += self.passes.state_flops - states0 + 2.0 * (self.passes.pass_flops - passes0)
        return next_token_loss(logits, answer_labels(batch, prompt_lens, lengths))

    def loss_on(self, prompts: Sequence[str], answers: Sequence[str]) -> float:
        """The distillation loss on given pairs, without training or counting (e.g. held-out pairs)."""
        tokens, flops = self.tokens, self.flops
        with torch.no_grad():
            value = float(self._loss(response_sequences(self.recipient, prompts, answers)))
        self.tokens, self.flops = tokens, flops
        return value

    def adapter(self) -> Adapter:
        """The adapter as trained so far (a frozen float32 copy on CPU)."""
        ivs = {layer: copy.deepcopy(iv).cpu().requires_grad_(False) for layer, iv in self._interventions.items()}
        meta = dict(self.start.metadata) | {"polish": {"steps": self.steps, "tokens": self.tokens,
                                                        "flops": self.flops, "lr": self.lr,
                                                        "batch_size": self.batch_size, "seed": self.seed}}
        return Adapter(ivs, positions=self.start.positions, first_last_k=self.start.first_last_k, metadata=meta)


def strata(changed: Sequence[bool], n: int) -> list[list[int]]:
    """The pair indices whose answer the edit changed and the others, as two strata; one stratum of all ``n`` pairs
    when either is empty (or no flags are given)."""
    groups = [[i for i, c in enumerate(changed) if bool(c) == flag] for flag in (True, False)]
    return groups if all(groups) else [list(range(n))]


def balanced_draw(groups: Sequence[Sequence[int]], batch_size: int, generator: torch.Generator) -> list[int]:
    """A batch of pair indices drawn with replacement, an equal share from each stratum (the first ones get the
    remainder): what both distillations (the ReFT polish and the LoRA output) train on."""
    idx: list[int] = []
    for k, group in enumerate(groups):
        n = batch_size // len(groups) + (k < batch_size % len(groups))
        idx += [group[j] for j in torch.randint(len(group), (n,), generator=generator).tolist()]
    return idx


def finetune_flops_estimate(recipient: ModelAccess, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """The FLOPs of a ReFT finetune of the recipient on this task, estimated from the prompts and the donor+adapter's
    answers: ``4 · params · FINETUNE_SEQUENCES · mean tokens of (prompt + answer)`` (the recipient's tokens), i.e.
    the zoo's shortest adapter recipe (400 steps of 32 sequences, as :class:`~commandv_interp.adapters.TrainingRecord`
    counts them) on sequences like these. The polish's default budget is a share of it.

    Example:
        >>> finetune_flops_estimate(recipient, ["a b"], ["c"]) > 0  # doctest: +SKIP
        True
    """
    if not prompts or len(prompts) != len(answers):
        raise ValueError(f"need one answer per prompt and at least one pair, got {len(prompts)} and {len(answers)}")
    _, _, lengths = response_sequences(recipient, prompts, answers)
    n_params = sum(p.numel() for p in recipient.torch_module.parameters())
    return 4.0 * n_params * FINETUNE_SEQUENCES * sum(lengths) / len(lengths)


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
