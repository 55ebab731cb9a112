"""Consumes a generated world's seed, produces its donor and recipient model plans and HF configs.

Every family the access layer reads (Llama, Mistral, Qwen2, Qwen3, GPT-2, GPT-NeoX, Phi, Gemma2, OPT), depths 2–16
and widths 48–256. The pair's shape cycles with the seed: ``deep→shallow``, ``shallow→deep`` (different families)
and ``same-family`` (one family, two sizes). Most seeds keep depth × width ≤ 512; every fourth seed allows up to
1,024 for its deeper model (the build then sets aside a plan whose pretraining its FLOPs budget cannot pay for, and
one that cannot learn the behavior, and draws the role's next plan: ``pair_plan(seed, attempts)``).

>>> d, r = pair_plan(0)
>>> (d.pair, d.n_layers > r.n_layers), pair_plan(6)[0].family == pair_plan(6)[1].family
(('deep→shallow', True), True)
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from transformers import (Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig,
                          PhiConfig, PretrainedConfig, Qwen2Config, Qwen3Config)

__all__ = ["FAMILIES", "PAIRS", "ROLES", "TOKENIZERS", "ModelPlan", "pair_plan", "build_config"]

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "gemma2", "opt")
PAIRS = ("deep→shallow", "shallow→deep", "same-family")
DEPTHS = (2, 3, 4, 5, 6, 8, 12, 16)
WIDTHS = (48, 64, 80, 96, 128, 160, 192, 256)
HEAD_DIM = 16


@dataclass(frozen=True)
class ModelPlan:
    """One generated model: family, depth, width, tokenizer kind, its role in the pair and the pair's shape."""

    role: str  # donor | recipient
    family: str
    n_layers: int
    d_model: int
    tokenizer: str
    pair: str

    @property
    def name(self) -> str:
        return f"{self.family}-{self.n_layers}x{self.d_model}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelPlan:
        return cls(**d)


def _shape(rng: random.Random, cap: int, deep: bool | None) -> tuple[int, int]:
    shapes = [(n, w) for n in DEPTHS for w in WIDTHS if n * w <= cap]
    if deep is not None:
        shapes = [(n, w) for n, w in shapes if (n >= 6) == deep and (n <= 6 or w <= 64)]
    return rng.choice(shapes)


ROLES = ("donor", "recipient")
TOKENIZERS = ("word", "bpe-64", "bpe-128", "bpe-256", "byte-bpe-320", "char")


def _tokenizer(kind: str, family: str, n_layers: int, d_model: int) -> str:
    """A drawn tokenizer kind, kept or swapped by the rules every plan obeys."""
    # transformers loads any qwen2 checkpoint's tokenizer as its byte-level Qwen2Tokenizer, which drops the
    # spaces of every other kind: a qwen2 model gets the byte-level BPE
    if family == "qwen2":
        return "byte-bpe-320"
    # char-level models read ~5x the tokens: keep them small, and deep enough to spell words (a 2-layer char-level
    # model answered 0.12 of v1's step questions right after pretraining, against 1.00 for a 6-layer BPE one)
    if kind == "char" and (n_layers * d_model > 384 or n_layers < 3):
        return "bpe-128"
    return kind


def _redraw(seed: int, plans: list[ModelPlan], i: int, attempt: int, cap: int) -> ModelPlan:
    """Role ``i``'s plan at a later ``attempt``: its shape and tokenizer (and, across families, its family) drawn
    again from a stream of their own, within the pair's shape; the other role's plan is kept."""
    plan, other = plans[i], plans[1 - i]
    rng = random.Random(f"commandv-models:{seed}:{plan.role}:{attempt}")
    family = plan.family if plan.pair == "same-family" else rng.choice([f for f in FAMILIES if f != other.family])
    if plan.pair == "same-family":
        n, w = _shape(rng, cap, None)
        while (n, w) == (other.n_layers, other.d_model):
            n, w = _shape(rng, cap, None)
    else:
        deep = (plan.pair == "deep→shallow") == (plan.role == "donor")
        n, w = _shape(rng, cap if deep else 512, deep)
    return ModelPlan(plan.role, family, n, w, _tokenizer(rng.choice(TOKENIZERS), family, n, w), plan.pair)


def pair_plan(seed: int, attempts: tuple[int, int] = (0, 0)) -> tuple[ModelPlan, ModelPlan]:
    """The donor and recipient plans of world ``seed`` (shape ``PAIRS[(seed // 3) % 3]``); a role whose
    ``attempts`` entry is k > 0 gets its k-th redrawn plan (the build's next plan for a model it could not afford
    or that could not learn the behavior: :func:`~commandv_interp.zoo.generated.build.build_folder`).

    >>> pair_plan(5, (0, 1))[0] == pair_plan(5)[0] != pair_plan(5, (1, 0))[0]
    True
    """
    rng = random.Random(f"commandv-models:{seed}")
    pair = PAIRS[(seed // 3) % 3]
    cap = 1024 if seed % 4 == 3 else 512
    fam_d, fam_r = rng.sample(FAMILIES, 2)
    if pair == "same-family":
        fam_r = fam_d
        (n1, w1), (n2, w2) = _shape(rng, cap, None), _shape(rng, cap, None)
        while (n1, w1) == (n2, w2):
            n2, w2 = _shape(rng, cap, None)
    else:
        (n1, w1), (n2, w2) = _shape(rng, cap, True), _shape(rng, 512, False)
        if pair == "shallow→deep":
            (n1, w1), (n2, w2) = (n2, w2), (n1, w1)
    kind_d, kind_r = rng.choice(TOKENIZERS), rng.choice(TOKENIZERS)
    plans = [ModelPlan("donor", fam_d, n1, w1, _tokenizer(kind_d, fam_d, n1, w1), pair),
             ModelPlan("recipient", fam_r, n2, w2, _tokenizer(kind_r, fam_r, n2, w2), pair)]
    for i, attempt in enumerate(attempts):
        if attempt < 0:
            raise ValueError(f"attempts are counts from 0, got {attempts}")
        if attempt:
            plans[i] = _redraw(seed, plans, i, attempt, cap)
    return plans[0], plans[1]


def build_config(plan: ModelPlan, vocab_size: int, max_positions: int, pad_id: int = 0, bos_id: int = 1,
                 eos_id: int = 2) -> PretrainedConfig:
    """The Hugging Face config of a planned model (heads of 16 dims; MLP 3× wide; no dropout; untied heads except
    where the family ties them).

    >>> p = ModelPlan("donor", "opt", 2, 48, "word", "same-family")
    >>> build_config(p, 100, 128).model_type
    'opt'
    """
    d, n = plan.d_model, plan.n_layers
    heads = d // HEAD_DIM
    ids = dict(pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, vocab_size=vocab_size)
    if plan.family == "gpt2":
        return GPT2Config(n_positions=max_positions, n_embd=d, n_layer=n, n_head=heads, n_inner=3 * d,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, **ids)
    if plan.family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=d, intermediate_size=3 * d, num_hidden_layers=n, num_attention_heads=heads,
                             rotary_pct=0.5, max_position_embeddings=max_positions, hidden_dropout=0.0,
                             attention_dropout=0.0, tie_word_embeddings=False, **ids)
    if plan.family == "opt":
        return OPTConfig(hidden_size=d, ffn_dim=3 * d, num_hidden_layers=n, num_attention_heads=heads,
                         word_embed_proj_dim=d, max_position_embeddings=max_positions, dropout=0.0,
                         attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, enable_bias=True,
                         do_layer_norm_before=True, tie_word_embeddings=True, **ids)
    if plan.family == "phi":
        return PhiConfig(hidden_size=d, intermediate_size=3 * d, num_hidden_layers=n, num_attention_heads=heads,
                         partial_rotary_factor=0.5, max_position_embeddings=max_positions, resid_pdrop=0.0,
                         embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False, **ids)
    kv = heads // 2 if heads % 2 == 0 else heads  # grouped-query attention where the heads split evenly
    common = dict(hidden_size=d, intermediate_size=3 * d, num_hidden_layers=n, num_attention_heads=heads,
                  num_key_value_heads=kv, max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, **ids)
    if plan.family == "llama":
        return LlamaConfig(**common)
    if plan.family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if plan.family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if plan.family == "qwen3":
        return Qwen3Config(**common, head_dim=HEAD_DIM, use_sliding_window=False)
    if plan.family == "gemma2":  # soft-capped logits, sliding window wider than any document
        return Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                            sliding_window=max_positions, hidden_activation="gelu_pytorch_tanh")
    raise ValueError(f"unknown family {plan.family!r}; known: {FAMILIES}")
