"""Consumes a model (with or without edits active), produces clean/edited last-prompt-token
readouts and next-token logits. Recording the states an edit reads (before it acts) is
:func:`commandv_interp.access.recording`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from commandv_interp.access import ModelAccess, batches, gather_rows, recording
from commandv_interp.types import Float, Tensor

__all__ = ["recording", "batches", "last_states", "last_logits", "token_id"]


def last_states(access: ModelAccess, prompts: Sequence[str], layers: Sequence[int],
                batch_size: int = 32) -> dict[int, Float[Tensor, "n d_model"]]:
    """Last-prompt-token block outputs at ``layers`` under the active edits (after the edit at each layer)."""
    parts = [access.read(b, layers, positions="last") for b in batches(access, prompts, batch_size)]
    return {layer: torch.cat([p[layer] for p in parts]) for layer in parts[0]}


def last_logits(access: ModelAccess, prompts: Sequence[str], batch_size: int = 32) -> Float[Tensor, "n vocab"]:
    """Next-token logits after each prompt (float32, CPU) under the active edits."""
    out = []
    with torch.no_grad():
        for b in batches(access, prompts, batch_size):
            logits = access.forward(b)
            out.append(gather_rows(logits, b.last_index.to(logits.device)).float().cpu())
    return torch.cat(out)


def token_id(access: ModelAccess, word: str) -> int:
    """The id of the first token of ``" " + word`` (how a response's first word is tokenized after the prompt)."""
    ids = access.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{word!r} tokenizes to nothing for {access.name!r}")
    return int(ids[0])
