"""Consumes a :class:`ModelAccess` and prompts (or a batch), produces a refusal before any model
runs when they do not fit the model's context.

Learned position tables (GPT-2) raise ``IndexError`` past their end; rotary models (Llama, Qwen2) run on but
were never trained there. Either way the check belongs before the work: the prompt pass, and a generation of
``new_tokens`` more.
"""

from __future__ import annotations

from collections.abc import Sequence

# context_length and check_fits_context live beside ModelAccess, which checks its own generations with them
from commandv_interp.access.base import ModelAccess, _preview, check_fits_context, context_length

__all__ = ["context_length", "check_fits_context", "check_models_fit", "check_answers_fit"]


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
