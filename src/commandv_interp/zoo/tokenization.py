"""Consumes the world (vocabulary, corpus), produces the zoo's two tokenizers.

Both are ``transformers.PreTrainedTokenizerFast`` with ``<pad>``/``<bos>``/``<eos>``/``<unk>`` (ids 0–3) and a
post-processor that prepends ``<bos>``: a word-level tokenizer over the world's vocabulary, and a byte-level BPE
trained (deterministically) on a corpus sample.

>>> tok = word_tokenizer()
>>> tok("user : hi")["input_ids"][:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("user")]
True
"""

from __future__ import annotations

from typing import Literal, get_args

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from commandv_interp.zoo.world import WorldLike, build_corpus, get_world, vocabulary

__all__ = ["TokenizerKind", "SPECIALS", "word_tokenizer", "bpe_tokenizer", "build_tokenizer"]

TokenizerKind = Literal["word", "bpe"]
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
BPE_VOCAB = 512  # the main world's: small on purpose, frequent words merge to one token, rarer ones stay split
BPE_CORPUS = (0, 20_000)  # (seed, n_docs) of the corpus sample the BPE is trained on


def _wrap(tok: Tokenizer, name: str) -> PreTrainedTokenizerFast:
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", name_or_path=name, model_max_length=128)


def word_tokenizer(world: WorldLike = None) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over ``world.vocabulary(world)``; decode joins words with spaces."""
    words = [w for w in vocabulary(world) if w not in SPECIALS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(list(SPECIALS) + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS))
    name = get_world(world).name
    return _wrap(tok, "zoo-word" if name == "main" else f"zoo-{name}-word")


def bpe_tokenizer(vocab_size: int | None = None, world: WorldLike = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``vocab_size`` entries (``None``: the world's ``bpe_vocab``, 512 for the main world)
    trained on a fixed sample of the world's corpus (same result every call)."""
    w = get_world(world)
    vocab_size = w.bpe_vocab if vocab_size is None else vocab_size
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = [d.removesuffix(" <eos>") for d in build_corpus(*BPE_CORPUS, world=w)]
    tok.train_from_iterator(docs, trainer=trainer)
    return _wrap(tok, f"zoo-bpe{vocab_size}" if w.name == "main" else f"zoo-{w.name}-bpe{vocab_size}")


def build_tokenizer(kind: TokenizerKind, world: WorldLike = None) -> PreTrainedTokenizerFast:
    """The zoo tokenizer of a kind (``"word"`` or ``"bpe"``) for a world (default: the main one)."""
    if kind not in get_args(TokenizerKind):
        raise ValueError(f"tokenizer kind must be one of {get_args(TokenizerKind)}, got {kind!r}")
    return word_tokenizer(world) if kind == "word" else bpe_tokenizer(world=world)
