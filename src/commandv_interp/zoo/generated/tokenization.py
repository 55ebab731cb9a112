"""Consumes a generated world's corpus, produces its tokenizers (word, BPE, byte-level BPE, char).

All are ``transformers.PreTrainedTokenizerFast`` with ``<pad>``/``<bos>``/``<eos>``/``<unk>`` (ids 0–3) and a
post-processor that prepends ``<bos>``, trained offline (and deterministically) with the ``tokenizers`` package on
a sample of the world's corpus:

- ``word``: whitespace word level over every word of the sample;
- ``bpe-64``/``bpe-128``/``bpe-256``: BPE over characters with a word-start marker (``▁``), merged up to that
  vocabulary size (the world's pseudo-words split into 1–4 pieces at 64, mostly whole at 256);
- ``byte-bpe-320``: byte-level BPE (the 256 bytes plus merges), GPT-2 style;
- ``char``: one token per character (and ``▁`` per word start), no merges.

>>> from commandv_interp.zoo.generated.grammar import grammar
>>> tok = build_tokenizer("char", grammar(0))
>>> tok.convert_ids_to_tokens(tok("ab")["input_ids"])
['<bos>', '▁', 'a', 'b']
"""

from __future__ import annotations

from typing import Literal, get_args

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from commandv_interp.zoo.generated.corpus import build_corpus
from commandv_interp.zoo.generated.grammar import Grammar

__all__ = ["TokenizerKind", "TOKENIZER_KINDS", "SPECIALS", "build_tokenizer", "max_positions"]

TokenizerKind = Literal["word", "bpe-64", "bpe-128", "bpe-256", "byte-bpe-320", "char"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
SAMPLE_DOCS = 4000  # corpus documents the tokenizers are trained on (seeded apart from pretraining's)


def max_positions(kind: str) -> int:
    """Position budget of a model on this tokenizer: the longest document is ~40 words, ~190 characters."""
    return 256 if kind in ("char", "bpe-64") else 128


def _wrap(tok: Tokenizer, name: str) -> PreTrainedTokenizerFast:
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", name_or_path=name, model_max_length=256)


def build_tokenizer(kind: TokenizerKind, g: Grammar) -> PreTrainedTokenizerFast:
    """The world's tokenizer of a kind (one of ``TOKENIZER_KINDS``); same result every call."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
    docs = [d.removesuffix(" <eos>") for d in build_corpus(g, -1, SAMPLE_DOCS)]
    name = f"world{g.seed}-{kind}"
    if kind == "word":
        words = sorted({w for d in docs for w in d.split()})
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(list(SPECIALS) + words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens(list(SPECIALS))
        return _wrap(tok, name)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind.startswith("byte-bpe"):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        tok.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = sorted({c for d in docs for c in d} - {" "} | {"▁"})
    size = len(alphabet) + len(SPECIALS) if kind == "char" else int(kind.rsplit("-", 1)[1])
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(docs, trainer=trainer)
    return _wrap(tok, name)
