"""Consumes a :class:`ModelAccess` and (prompt, response) examples, produces a trained
:class:`Adapter` and a :class:`TrainingRecord`.

The base model is frozen; only the interventions learn. The loss is next-token cross-entropy on the
response tokens only. Works on either backend because it edits through ``ModelAccess.edited``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from commandv_interp.access import Batch, ModelAccess, open_model, prompt_position_mask
from commandv_interp.access.fingerprint import weights_digest
from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.interventions import INTERVENTION_KINDS, make_intervention
from commandv_interp.types import Bool, Float, Int, Tensor, check_choice

__all__ = ["train_adapter", "TrainingRecord", "encode_examples", "next_token_loss"]


@dataclass(frozen=True)
class TrainingRecord:
    """What training cost. ``flops`` ≈ 4 · n_params · tokens_seen: forward (2N) plus the backward pass
    through activations (2N); the frozen base needs no weight gradients."""

    steps: int
    wall_time_s: float
    tokens_seen: int
    flops: float
    initial_loss: float
    final_loss: float
    n_params_base: int
    n_params_trained: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def next_token_loss(logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]) -> Tensor:
    """Mean cross-entropy (float32) of each position's logits against the next position's label, over the labels
    that are not -100 (the response tokens).

    >>> logits = torch.zeros(1, 3, 5); labels = torch.tensor([[-100, 2, 4]])
    >>> round(float(next_token_loss(logits, labels)), 6) == round(math.log(5), 6)
    True
    """
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             labels[:, 1:].flatten().to(logits.device), ignore_index=-100)


def encode_examples(
    access: ModelAccess, examples: Sequence[tuple[str, str]]
) -> tuple[Batch, Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Right-padded ``prompt + response + eos`` ids, labels (-100 outside the response) and the prompt mask."""
    tok = access.tokenizer
    rows, labels, prompt_lens = [], [], []
    for prompt, response in examples:
        p = tok(prompt)["input_ids"]
        r = tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p + r)
        labels.append([-100] * len(p) + r)
        prompt_lens.append(len(p))
    width = max(map(len, rows))
    pad = tok.pad_token_id
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    lab = torch.tensor([row + [-100] * (width - len(row)) for row in labels])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    prompt_mask = torch.arange(width)[None, :] < torch.tensor(prompt_lens)[:, None]
    return Batch(ids, mask), lab, prompt_mask


def _train_edit(intervention, select: Tensor):
    def edit(hidden: Tensor, ctx) -> Tensor:
        sel = select.to(hidden.device)
        delta = intervention.delta(hidden[sel].float()).to(hidden.dtype)
        out = hidden.clone()
        out[sel] = hidden[sel] + delta
        return out

    edit.acts_on_decode = False
    return edit


def train_adapter(
    model: ModelAccess | object,
    examples: Sequence[tuple[str, str]],
    layers: Sequence[int],
    kind: str = "nodireft",
    rank: int = 8,
    positions: str = "last",
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 4e-3,
    weight_decay: float = 0.0,
    first_last_k: int | None = None,
    seed: int = 0,
    progress: bool = True,
    metadata: dict | None = None,
) -> tuple[Adapter, TrainingRecord]:
    """Train a residual-stream ReFT adapter on a frozen model.

    Args:
        model: the donor (``ModelAccess`` or anything ``open_model`` accepts).
        examples: ``(prompt, response)`` pairs; the loss covers the response and EOS only.
        layers: block indices to intervene on (e.g. every other layer).
        kind: ``nodireft`` (the paper's), ``direft``, ``loreft`` or ``noreft``.
        rank: low-rank dimension ``r``.
        positions: where the intervention acts during training (``last``, ``all`` or ``first_last``).
        steps, batch_size, lr, weight_decay: AdamW schedule (cosine decay).
        seed: seeds the initialization and the example order.

    Returns:
        The trained :class:`Adapter` (float32, on CPU) and a :class:`TrainingRecord`.
    """
    access = open_model(model)
    check_choice("kind", kind, tuple(INTERVENTION_KINDS))
    check_choice("positions", positions, ("last", "all", "first_last"))
    layers = access._check_layers(layers)
    if not examples:
        raise ValueError("train_adapter needs at least one (prompt, response) example")
    torch.manual_seed(seed)
    device = access.device
    interventions = {layer: make_intervention(kind, access.d_model, rank).to(access.block_device(layer))
                     for layer in layers}
    params = [p for iv in interventions.values() for p in iv.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    base = access.torch_module
    flags = [p.requires_grad for p in base.parameters()]
    n_base = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(seed)
    tokens, loss_value, first_loss, start = 0, float("nan"), float("nan"), time.perf_counter()
    try:
        base.requires_grad_(False)
        for step in tqdm(range(steps), desc=f"train {kind} on {access.name}", disable=not progress):
            idx = torch.randint(len(examples), (min(batch_size, len(examples)),), generator=gen).tolist()
            batch, labels, prompt_mask = encode_examples(access, [examples[i] for i in idx])
            select = prompt_position_mask(prompt_mask.long(), positions, first_last_k)
            edits = {layer: _train_edit(iv, select) for layer, iv in interventions.items()}
            with access.edited(edits):
                logits = access.forward(batch)
            loss = next_token_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for iv in interventions.values():
                iv.project()
            sched.step()
            tokens += int(batch.attention_mask.sum())
            loss_value = float(loss.detach())
            first_loss = loss_value if step == 0 else first_loss
    finally:
        for p, flag in zip(base.parameters(), flags):
            p.requires_grad_(flag)
    wall = time.perf_counter() - start
    for iv in interventions.values():
        iv.requires_grad_(False)
    record = TrainingRecord(steps, wall, tokens, 4.0 * n_base * tokens, first_loss, loss_value, n_base,
                            sum(p.numel() for p in params), seed)
    meta = {"model_name": access.name, "config_hash": access.config_hash, "weights_digest": weights_digest(access),
            "kind": kind, "rank": rank,
            "training": record.to_dict()} | dict(metadata or {})
    adapter = Adapter({layer: iv.cpu() for layer, iv in interventions.items()}, positions=positions,
                      first_last_k=first_last_k, metadata=meta)
    return adapter, record
