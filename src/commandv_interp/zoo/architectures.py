"""Consumes a zoo model name, produces its from-scratch Hugging Face config and tokenizer kind.

The main world's zoo (``ZOO``): three families, depths and widths: a Llama-style model (RMSNorm, rotary, SwiGLU) on
the word-level tokenizer, a GPT-2-style model (LayerNorm, learned positions, GELU) and a Qwen2-style model (RMSNorm,
rotary, SwiGLU, qkv biases) on the byte-level BPE. The held-out world's (``HELDOUT_ZOO``): a GPT-NeoX-style model
(parallel attention and MLP, fused QKV, partial rotary, LayerNorm) on the BPE and a Qwen3-style one (q/k RMSNorm,
GQA, no biases) on the word-level tokenizer, each smaller than any main model. ``SPECS`` holds both.

>>> spec("gpt2-4x96").tokenizer, spec("gpt2-4x96").n_layers
('bpe', 4)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

__all__ = ["ZooSpec", "ZOO", "HELDOUT_ZOO", "SPECS", "spec", "build_config", "MAX_POSITIONS"]

MAX_POSITIONS = 128  # the longest world document is about 50 tokens


@dataclass(frozen=True)
class ZooSpec:
    """One zoo model: family, depth, width, heads, MLP width and tokenizer kind."""

    name: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    tokenizer: str
    n_kv_heads: int | None = None  # None: as many as query heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ZooSpec:
        return cls(**d)


ZOO: dict[str, ZooSpec] = {s.name: s for s in (
    ZooSpec("llama-6x128", "llama", 6, 128, 4, 256, "word", n_kv_heads=2),
    ZooSpec("gpt2-4x96", "gpt2", 4, 96, 4, 384, "bpe"),
    ZooSpec("qwen2-5x160", "qwen2", 5, 160, 5, 320, "bpe"),  # one KV head never learned to copy the operands
)}
"""The main world's models."""

HELDOUT_ZOO: dict[str, ZooSpec] = {s.name: s for s in (
    ZooSpec("neox-4x80", "gpt_neox", 4, 80, 4, 320, "bpe"),  # 3 layers: the adapter's last site was the output
    ZooSpec("qwen3-4x112", "qwen3", 4, 112, 4, 288, "word", n_kv_heads=2),
)}
"""The held-out world's models."""

SPECS: dict[str, ZooSpec] = {**ZOO, **HELDOUT_ZOO}


def spec(name: str) -> ZooSpec:
    """The spec of a zoo model (of any world) by name."""
    if name not in SPECS:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]


def build_config(name: str, vocab_size: int, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2) -> PretrainedConfig:
    """The Hugging Face config of a zoo model for a tokenizer of ``vocab_size`` tokens.

    >>> build_config("llama-6x128", 200).model_type, build_config("neox-4x80", 200).model_type
    ('llama', 'gpt_neox')
    """
    s = spec(name)
    ids = dict(pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    if s.family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=MAX_POSITIONS, n_embd=s.d_model, n_layer=s.n_layers,
                          n_head=s.n_heads, n_inner=s.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          tie_word_embeddings=True, **ids)
    if s.family == "gpt_neox":  # partial rotary: half of each 20-dim head
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=s.d_model, intermediate_size=s.d_mlp,
                             num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads, rotary_pct=0.5,
                             max_position_embeddings=MAX_POSITIONS, hidden_dropout=0.0, attention_dropout=0.0,
                             tie_word_embeddings=False, **ids)
    common = dict(vocab_size=vocab_size, hidden_size=s.d_model, intermediate_size=s.d_mlp,
                  num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
                  num_key_value_heads=s.n_kv_heads or s.n_heads, max_position_embeddings=MAX_POSITIONS,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, **ids)
    if s.family == "llama":
        return LlamaConfig(**common)
    if s.family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if s.family == "qwen3":
        return Qwen3Config(**common, head_dim=s.d_model // s.n_heads, use_sliding_window=False)
    raise ValueError(f"unknown family {s.family!r}")
