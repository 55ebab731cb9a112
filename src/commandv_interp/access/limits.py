"""Stage 1 (access): consumes a :class:`ModelAccess` and prompts (or a batch), produces a refusal before any model
runs when they do not fit the model's context.

Learned position tables (GPT-2) raise ``IndexError`` past their end; rotary models (Llama, Qwen2) run on but
were never trained there. Either way the check belongs before the work: the prompt pass, and a generation of
``new_tokens`` more.
"""

from __future__ import annotations

from collections.abc import Sequence

from commandv_interp.access.base import Batch, ModelAccess

__all__ = ["context_length", "check_fits_context", "check_models_fit", "check_answers_fit"]

_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(access: ModelAccess) -> int | None:
    """The model's number of positions from its Hugging Face config (``None`` if the config names none)."""
    cfg = access.hf_config
    for name in _FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def check_fits_context(access: ModelAccess, prompts: Sequence[str] | Batch, new_tokens: int = 0) -> None:
    """Refuse prompts (or a padded batch) whose tokens plus ``new_tokens`` exceed the model's positions.

    Args:
        access: the model that will run them.
        prompts: the exact texts fed to the model, or the :class:`Batch` made from them (its padded width counts).
        new_tokens: tokens a generation will add after the prompt.

    Raises:
        ValueError: no prompts, a negative ``new_tokens``, or a prompt too long; the message names the longest
            prompt, its length and the limit.
    """
    if isinstance(prompts, str):
        raise ValueError("pass a list of prompts, not a single string; wrap it in a list")
    if not isinstance(new_tokens, int) or new_tokens < 0:
        raise ValueError(f"new_tokens must be an int >= 0, got {new_tokens!r}")
    if isinstance(prompts, Batch):
        lengths = prompts.attention_mask.sum(dim=1).tolist()
        width = int(prompts.input_ids.shape[1])
        if not lengths:
            raise ValueError("the batch holds no prompts; encode at least one")
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        name = f"row {longest} of the batch ({int(lengths[longest])} tokens, padded to {width})"
    else:
        texts = list(prompts)
        if not texts:
            raise ValueError("no prompts given; pass at least one")
        ids = access.tokenizer(texts)["input_ids"]
        lengths = [len(row) for row in ids]
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        width = lengths[longest]
        name = f"prompt {longest} {_preview(texts[longest])} ({width} tokens)"
    limit = context_length(access)
    if limit is None or width + new_tokens <= limit:
        return
    plus = f" + {new_tokens} new tokens = {width + new_tokens}" if new_tokens else ""
    raise ValueError(f"{name}{plus} exceeds the {limit} positions of {access.name!r}; shorten the prompts"
                     + (" or lower the new tokens (--max-new-tokens)" if new_tokens else ""))


def check_models_fit(models: Sequence[ModelAccess], prompts: Sequence[str], new_tokens: int = 0) -> None:
    """:func:`check_fits_context` for every model that will read ``prompts`` plus ``new_tokens`` generated ones
    (e.g. a donor's answer that the recipient then reads): the first model that cannot is named with the prompt.

    Call it before any model runs (``commandv transfer``, ``analyze``, studies and the polish do).

    Raises:
        ValueError: as :func:`check_fits_context`, for the first model too short.
    """
    for access in models:
        check_fits_context(access, prompts, new_tokens)


def check_answers_fit(access: ModelAccess, prompts: Sequence[str], answers: Sequence[str]) -> None:
    """Refuse prompt + answer texts (e.g. a donor's answers re-tokenized for the recipient) longer than ``access``'s
    positions, naming the prompt index, both lengths and the model; call it once the answers exist, before scoring.

    Raises:
        ValueError: a prompt and its answer do not fit together.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt")
    limit = context_length(access)
    if limit is None or not prompts:
        return
    prompt_ids = access.tokenizer(list(prompts))["input_ids"]
    joined_ids = access.tokenizer([p + a for p, a in zip(prompts, answers)])["input_ids"]
    for i, (p_ids, j_ids) in enumerate(zip(prompt_ids, joined_ids)):
        if len(j_ids) > limit:
            raise ValueError(f"prompt {i} {_preview(prompts[i])} ({len(p_ids)} tokens) with its answer "
                             f"({len(j_ids) - len(p_ids)} more tokens) exceeds the {limit} positions of "
                             f"{access.name!r}; shorten the prompts or lower max_new_tokens")
