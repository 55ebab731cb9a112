"""Stage 7 (analysis): consumes a model (with or without edits active), produces last-prompt-token states:
block outputs *before* a later-entered edit acts on them, and clean/edited readouts and next-token logits.

Edits compose in the order their contexts were entered, so a recorder entered *outside* ``paste`` or
``apply_adapter`` sees each block output after the edits of earlier layers but before the edit at its own layer:
exactly the state the pasted intervention reads.

>>> with recording(recipient, [1, 3]) as states, paste(recipient, adapter, converters):  # doctest: +SKIP
...     recipient.forward(batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from commandv_interp.access import Batch, EditContext, ModelAccess, gather_rows, last_token_index
from commandv_interp.types import Float, Tensor

__all__ = ["recording", "batches", "last_states", "last_logits", "token_id"]


@contextlib.contextmanager
def recording(access: ModelAccess, layers: Sequence[int]) -> Iterator[dict[int, list[Tensor]]]:
    """Record, at every forward's prompt pass, each row's last-prompt-token block output at ``layers``.

    Yields:
        dict layer → list of ``batch × d_model`` float32 CPU tensors (one per forward pass).
    """
    states: dict[int, list[Tensor]] = {layer: [] for layer in layers}

    def recorder(layer: int):
        def record(hidden: Tensor, ctx: EditContext) -> Tensor:
            if ctx.step == 0:
                rows = gather_rows(hidden, last_token_index(ctx.prompt_mask).to(hidden.device))
                states[layer].append(rows.detach().to(device="cpu", dtype=torch.float32))
            return hidden

        record.acts_on_decode = False
        return record

    with access.edited({layer: recorder(layer) for layer in layers}):
        yield states


def batches(access: ModelAccess, prompts: Sequence[str], batch_size: int) -> Iterator[Batch]:
    """Left-padded batches of ``prompts`` in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    for start in range(0, len(prompts), batch_size):
        yield access.encode(list(prompts[start:start + batch_size]), padding_side="left")


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
