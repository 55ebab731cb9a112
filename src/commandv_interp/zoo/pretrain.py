"""Consumes a zoo model name and a seed, produces a base model pretrained from scratch on the world.

Plain PyTorch causal-LM training: one world document per row (``<bos>`` … ``<eos>``, right-padded), loss on
non-pad tokens, AdamW with linear warmup and cosine decay. Same seed, same weights (on one machine and thread count).
``python -m commandv_interp.zoo.pretrain --all [--world heldout]`` regenerates a world's shipped checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from commandv_interp.zoo.architectures import SPECS, build_config, spec
from commandv_interp.zoo.tokenization import build_tokenizer
from commandv_interp.zoo.world import WORLDS, MAIN, World, WorldLike, build_corpus, get_world, world_fingerprint

__all__ = ["PretrainRecord", "pretrain", "save_checkpoint", "CHECKPOINTS", "STEPS"]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
STEPS = dict(MAIN.models)  # the main world's shipped run lengths (batch 64); ``World.models`` has each world's
N_DOCS = 100_000  # corpus size; about 1.3 epochs at 2000 steps × 64
RECORD_FILE = "pretrain_record.json"


@dataclass(frozen=True)
class PretrainRecord:
    """What a pretraining run did: sizes, cost (FLOPs ≈ 6 · params · trained tokens) and final loss."""

    name: str
    seed: int
    steps: int
    batch_size: int
    lr: float
    n_docs: int
    n_params: int
    tokens: int
    flops: float
    wall_s: float
    final_loss: float
    tokenizer: str
    world_fingerprint: str
    tokenization_digest: str = ""  # of the ids the model was trained on (see tokenization_digest)
    world: str = "main"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PretrainRecord:
        return cls(**d)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine down to 10% of the peak


def _batch(docs: list[list[int]], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [docs[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def _bucketed(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within windows of 32 batches (less padding)."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 32
    batches = []
    for start in range(0, len(perm) - batch_size + 1, window):
        chunk = sorted(perm[start:start + window], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def pretrain(name: str, seed: int = 0, steps: int | None = None, batch_size: int = 64, lr: float = 3e-3,
             n_docs: int = N_DOCS, warmup: int = 100, progress: bool = True, world: WorldLike = None,
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, PretrainRecord]:
    """Train a zoo model from scratch on the world corpus.

    Args:
        name: one of the world's models (``World.models``; the main world's are ``architectures.ZOO``).
        seed: seeds the corpus sample, the initialization and the batch order.
        steps: optimizer steps (``None``: the shipped ``World.models[name]``).
        batch_size: documents per step.
        lr: peak learning rate (AdamW, weight decay 0.1 on matrices).
        n_docs: corpus size.
        warmup: linear warmup steps (capped at a tenth of the run).
        world: the world whose corpus it learns (a ``World``, its name, or ``None`` for the main one).

    Returns:
        The float32 model in eval mode, its tokenizer and the run's record.
    """
    w = _world_of(name, world)
    steps = w.models[name] if steps is None else steps
    if steps < 1 or batch_size < 1 or n_docs < batch_size:
        raise ValueError(f"need steps ≥ 1 and n_docs ≥ batch_size ≥ 1, got {steps!r}, {n_docs!r}, {batch_size!r}")
    tok = training_tokenizer(name, w)
    docs = tok(build_corpus(seed, n_docs, w))["input_ids"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(name, len(tok), tok.pad_token_id, tok.bos_token_id,
                                                          tok.eos_token_id)).float().train()
    t0 = time.perf_counter()
    losses, tokens = train_causal_lm(model, docs, tok.pad_token_id, steps, batch_size, lr, warmup, seed, name, progress)
    n_params = sum(p.numel() for p in model.parameters())
    tail = losses[-min(50, len(losses)):]
    record = PretrainRecord(name, seed, steps, batch_size, lr, n_docs, n_params, tokens, 6.0 * n_params * tokens,
                            round(time.perf_counter() - t0, 2), sum(tail) / len(tail), spec(name).tokenizer,
                            world_fingerprint(w), tokenization_digest(tok, w), w.name)
    return model.eval(), tok, record


def train_causal_lm(model: torch.nn.Module, docs: list[list[int]], pad_id: int, steps: int, batch_size: int,
                    lr: float, warmup: int, seed: int, name: str = "pretrain", progress: bool = False
                    ) -> tuple[list[float], int]:
    """Next-token training of ``model`` on tokenized ``docs``, in place: AdamW (weight decay 0.1 on matrices, betas
    0.9/0.98), linear warmup over ``min(warmup, steps // 10)`` steps (at least 1) then cosine decay, gradients clipped
    at 1, batches of similar lengths drawn by a generator seeded with ``seed``. Returns the per-step losses and the
    number of trained (non-pad) tokens."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    lengths = [len(d) for d in docs]
    order: list[list[int]] = []
    losses, tokens = [], 0
    warmup = min(warmup, max(1, steps // 10))
    for step in (bar := tqdm(range(steps), desc=name, disable=not progress, mininterval=2.0)):
        if not order:
            order = _bucketed(lengths, batch_size, gen)
        ids, mask, labels = _batch(docs, order.pop(), pad_id)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        tokens += int(mask.sum())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    return losses, tokens


def _world_of(name: str, world: WorldLike) -> World:
    w = get_world(world)
    spec(name)
    if name not in w.models:
        raise ValueError(f"zoo model {name!r} is not in the {w.name!r} world; its models: {sorted(w.models)}")
    return w


def training_tokenizer(name: str, world: WorldLike = None) -> PreTrainedTokenizerFast:
    """The zoo tokenizer of ``name`` exactly as ``AutoTokenizer.from_pretrained`` will load it from the checkpoint.

    transformers 5 swaps in its own tokenizer class for some model types whatever the checkpoint says (Qwen2 gets
    ``Qwen2Tokenizer``, whose pre-tokenizer splits digits from the preceding space): a model must be trained on the
    ids users will feed it, so the corpus is tokenized by the reloaded tokenizer, not the one we built.
    """
    tok = build_tokenizer(spec(name).tokenizer, world)  # type: ignore[arg-type]
    config = build_config(name, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        config.save_pretrained(tmp)
        loaded = AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
    if len(loaded) != len(tok) or loaded.pad_token_id != tok.pad_token_id:
        raise RuntimeError(f"reloading the {name!r} tokenizer changed its vocabulary or specials")
    return loaded


def tokenization_digest(tokenizer: object, world: WorldLike = None) -> str:
    """Hash of the ids a tokenizer gives a fixed sample of the world (prompts with and without cues, numbers):
    equal digests mean a checkpoint's tokenizer feeds the model what it was trained on."""
    ids = tokenizer(build_corpus(12345, 300, world))["input_ids"]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, directory: str | Path,
                    record: PretrainRecord | None = None) -> Path:
    """Write ``save_pretrained`` float16 safetensors, the tokenizer and ``pretrain_record.json`` to ``directory``.

    The model passed in is not modified (a float16 copy is saved).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if record is not None:
        (directory / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the zoo's base models on the world corpus.")
    parser.add_argument("--world", choices=sorted(WORLDS), default="main")
    parser.add_argument("--all", action="store_true", help="train every model of the world")
    parser.add_argument("--model", choices=sorted(SPECS), action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the shipped step count")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    parser.add_argument("--threads", type=int, default=1)  # the machine is shared: 2 threads oversubscribe
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in sorted(WORLDS[args.world].models) if args.all else args.model:
        model, tok, record = pretrain(name, seed=args.seed, steps=args.steps, world=args.world)
        save_checkpoint(model, tok, args.out / name, record)
        print(json.dumps(record.to_dict()))


if __name__ == "__main__":
    main()
