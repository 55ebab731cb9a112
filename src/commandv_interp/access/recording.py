"""Consumes a model, produces last-prompt-token block outputs recorded *inside* other edits.

Edits compose in the order their contexts were entered, so a recorder entered *outside* ``paste`` or
``apply_adapter`` sees each block output after the edits of earlier layers but before the edit at its own layer:
exactly the state the pasted intervention reads.

>>> with recording(recipient, [1, 3]) as states, paste(recipient, adapter, converters):  # doctest: +SKIP
...     for batch in batches(recipient, prompts, 32):
...         recipient.forward(batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from commandv_interp.access.base import Batch, EditContext, ModelAccess
from commandv_interp.access.blocks import find_block_path
from commandv_interp.access.positions import gather_rows, last_token_index
from commandv_interp.types import Tensor

__all__ = ["recording", "batches", "recorded_states", "forward_flops", "token_flops"]


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


def recorded_states(access: ModelAccess, layers: Sequence[int], prompts: Sequence[str],
                    edit: AbstractContextManager | None = None, batch_size: int = 32) -> dict[int, Tensor]:
    """Run ``prompts`` through ``access`` under ``edit`` (e.g. a ``paste``) and return each layer's last-prompt-token
    states as one ``n × d_model`` float32 tensor, recorded before the edit acts at that layer.

    Each forward pass stops after the deepest of ``layers`` (a causal model's states there do not depend on the
    blocks above), so recording low layers costs a fraction of a full pass (see :func:`forward_flops`)."""
    if not layers:
        raise ValueError("recorded_states needs at least one layer to record")
    deepest = max(layers)
    with torch.no_grad(), recording(access, layers) as states, edit or nullcontext():
        for batch in batches(access, prompts, batch_size):
            access.read(batch, [deepest])  # a forward pass truncated after ``deepest``; the recorder keeps the rows
    return {layer: torch.cat(parts) for layer, parts in states.items()}


def forward_flops(access: ModelAccess, prompts: Sequence[str], through_layer: int | None = None) -> float:
    """Estimated FLOPs of one forward pass over ``prompts``: ``2 · params · tokens``, where ``params`` are those
    the pass runs. With ``through_layer`` the pass stops after that block (as :meth:`ModelAccess.read` and
    :func:`recorded_states` do): the blocks above it and an untied output head are not counted; the input
    embedding is (as in a training run's ``n_params``)."""
    tokens = sum(len(ids) for ids in access.tokenizer(list(prompts))["input_ids"])
    return token_flops(access, tokens, through_layer)


def token_flops(access: ModelAccess, tokens: int | float, through_layer: int | None = None,
                after_layer: int | None = None) -> float:
    """Estimated FLOPs of a forward pass over ``tokens`` tokens (``2 · params · tokens``, ``params`` as in
    :func:`forward_flops`): what a pass over token ids already in hand costs. With ``after_layer`` the pass starts
    from that block's output (:meth:`ModelAccess.forward_suffix` with ``start``): the input embedding and the blocks
    up to it are not counted."""
    if after_layer is None:
        return 2.0 * _params_through(access, through_layer) * float(tokens)
    if through_layer is not None:
        raise ValueError("give through_layer or after_layer, not both")
    return 2.0 * _params_after(access, after_layer) * float(tokens)


def _params_through(access: ModelAccess, through_layer: int | None) -> int:
    module = access.torch_module
    total = sum(p.numel() for p in module.parameters())
    if through_layer is None:
        return total
    if not 0 <= through_layer < access.n_layers:
        raise ValueError(f"through_layer={through_layer} out of range for {access.name!r} with "
                         f"n_layers={access.n_layers}")
    try:
        blocks = module.get_submodule(find_block_path(module))
    except (ValueError, AttributeError):
        return total  # not a Hugging Face layout: count the whole model (an over-estimate)
    above = sum(p.numel() for block in list(blocks)[through_layer + 1:] for p in block.parameters())
    head = getattr(module, "get_output_embeddings", lambda: None)()
    embed = getattr(module, "get_input_embeddings", lambda: None)()
    untied = head is not None and (embed is None or head.weight is not embed.weight)
    return total - above - (sum(p.numel() for p in head.parameters()) if untied else 0)


def _params_after(access: ModelAccess, after_layer: int) -> int:
    """The parameters a pass starting from block ``after_layer``'s output runs: the whole model's but the input
    embedding (when the head does not share it) and the blocks up to ``after_layer``."""
    module = access.torch_module
    if not 0 <= after_layer < access.n_layers:
        raise ValueError(f"after_layer={after_layer} out of range for {access.name!r} with "
                         f"n_layers={access.n_layers}")
    total = sum(p.numel() for p in module.parameters())
    try:
        blocks = module.get_submodule(find_block_path(module))
    except (ValueError, AttributeError):
        return total  # not a Hugging Face layout: count the whole model (an over-estimate)
    below = sum(p.numel() for block in list(blocks)[:after_layer + 1] for p in block.parameters())
    head = getattr(module, "get_output_embeddings", lambda: None)()
    embed = getattr(module, "get_input_embeddings", lambda: None)()
    shared = head is not None and embed is not None and head.weight is embed.weight
    return total - below - (0 if shared or embed is None else sum(p.numel() for p in embed.parameters()))
