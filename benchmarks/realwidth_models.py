"""The models and adapter of ``realwidth.py`` (see its docstring): two random Llamas at the paper's shapes (or small
ones for ``--quick``), built offline from configs with the zoo's word-level tokenizer, and the reference NodiReFT
adapter (cut to a smaller donor's width and depth)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import commandv_interp as cv
from commandv_interp.adapters import make_intervention
from commandv_interp.zoo.tokenization import SPECIALS
from devices import built_on

REFERENCE_ADAPTER = Path("/work/shared/reference_adapters/cot_reasoning-Llama-3.2-3B-Instruct-nodireft-l1")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "realwidth.md"
MIB = 2**20
BATCH_SIZE = 32
LLAMA3_VOCAB = 128256  # the paper's Llama 3.2 models' vocabulary


@dataclass(frozen=True)
class Shape:
    """One random Llama: width, blocks, attention heads and KV heads."""

    d_model: int
    n_layers: int
    heads: int
    kv_heads: int


@dataclass(frozen=True)
class Setup:
    donor: Shape
    recipient: Shape
    n_profile: int
    n_gen: int = 16  # the paste-entry target is stated against a 16-prompt × 16-token generation
    new_tokens: int = 16


SETUPS = {
    "full": Setup(Shape(3072, 28, 24, 8), Shape(2048, 16, 32, 8), n_profile=256),
    "quick": Setup(Shape(192, 6, 6, 2), Shape(128, 4, 4, 2), n_profile=64),
}


def random_llama(tokenizer, shape: Shape, intermediate: int, seed: int, vocab: int = 0,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random Llama of ``shape``; ``vocab`` rows of embedding and head (at least the tokenizer's); initialized on
    ``device``, then cast to ``dtype``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)), hidden_size=shape.d_model, intermediate_size=intermediate,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    with built_on(device):
        model = LlamaForCausalLM(config).eval().to(dtype)
    model.generation_config.eos_token_id = None  # every row decodes all new tokens, in every mode
    return model


def random_prompts(tokenizer, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w not in SPECIALS)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(n)]


def reference_adapter(donor: Shape) -> cv.Adapter:
    """The reference adapter; for a narrower or shallower donor, its layers that exist there, cut to its width."""
    adapter = cv.load_adapter(REFERENCE_ADAPTER)
    d_ref = next(iter(adapter.interventions.values())).d_model
    if d_ref == donor.d_model and max(adapter.interventions) < donor.n_layers:
        return adapter
    cut = {}
    for layer, iv in adapter.interventions.items():
        if layer >= donor.n_layers:
            continue
        rank = iv.proj_layer.weight.shape[0]
        new = make_intervention(type(iv).__name__.lower(), donor.d_model, rank)
        with torch.no_grad():
            for name, param in new.named_parameters():
                ref = dict(iv.named_parameters())[name]
                param.copy_(ref[tuple(slice(0, donor.d_model) if n == d_ref else slice(None) for n in ref.shape)])
        cut[layer] = new.requires_grad_(False)
    return cv.Adapter(cut, positions=adapter.positions, first_last_k=adapter.first_last_k)
