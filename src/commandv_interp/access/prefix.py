"""Consumes a Hugging Face causal LM and token-id prompts, produces their *prefix states* (each prompt's key/value
cache over all its tokens but the last) and the inputs of a pass that starts at the last prompt token from them.

A label-free transfer scores many candidate edits, and trains one, teacher-forced on the same prompts, and every
such edit acts at the last prompt token only. The tokens before it are then in the same state under every edit
(causal attention: nothing reads forward), so their keys and values can be computed once; each later pass runs the
*suffix* (the last prompt token and the response) on top of them, with the edit at the suffix's first position.
Its logits equal those of the whole sequence at the same positions (to float rounding: tested on every family the
access layer supports), and a backward through it gives the same gradients, at a fraction of the tokens.

Rows of different prompts are batched by left-padding their prefixes (masked) and right-padding the suffixes; each
row's positions continue from its own prefix length.

An edit at the last prompt token of block ``L`` leaves every block up to ``L`` as it is at every suffix position
(the edit writes into ``L``'s output; nothing reads forward). A pass under edits from block ``L`` up can then start
from ``L``'s output as a plain pass gave it (:func:`replayed_blocks`): the blocks below return what they are given,
block ``L`` returns those states, the edit's hook acts on them, and only the blocks above run.

The same states serve texts that continue one another (a prompt, and the prompt followed by a word): with no edit
active, the state at each text's last token is read from a pass over its tokens after its *root*'s prefix
(:func:`continuation_roots`), so a profile of prompts and their continuations runs each prompt once.

>>> PrefixStates((), (), ()).n_prompts
0
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from commandv_interp.access.blocks import rewrap_block_output
from commandv_interp.types import Float, Int, Tensor

__all__ = ["PrefixStates", "continuation_roots", "prefix_states", "replayed_blocks", "shared_prefix_tokens",
           "suffix_inputs"]


@dataclass(frozen=True)
class PrefixStates:
    """Per prompt, per layer, the keys and values of its tokens but the last (``kv_heads × length × head_dim``,
    detached), and each prefix's ``lengths`` in tokens."""

    keys: tuple[tuple[Tensor, ...], ...]
    values: tuple[tuple[Tensor, ...], ...]
    lengths: tuple[int, ...]

    @property
    def n_prompts(self) -> int:
        return len(self.lengths)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its cache by (``cache`` in newer transformers, else
    ``past_key_values``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _layer_tensors(cache: object) -> list[tuple[Tensor, Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"unsupported cache type {type(cache).__name__}: expected a transformers DynamicCache")
    reached = [layer for layer in layers if getattr(layer, "is_initialized", True)]  # a stopped pass: the first ones
    return [(layer.keys, layer.values) for layer in reached]


class _Stopped(Exception):
    """Raised by the hook that stops a prefix pass after its last block."""


def continuation_roots(ids: Sequence[Sequence[int]]) -> list[int]:
    """Per text (token ids), the index of the shortest text of the list of at least two tokens whose ids begin its
    own (itself when none does; -1 for a text of one token, which has no prefix to share). A text's state at its
    last token is then a pass over ``ids[len(root) - 1:]`` from the root's prefix states.

    >>> continuation_roots([[1, 2], [1, 2, 3], [1, 2, 4, 5], [7], [1, 3]])
    [0, 0, 0, -1, 4]
    """
    index: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(ids):
        index.setdefault(tuple(row), i)
    roots = []
    for i, row in enumerate(ids):
        if len(row) < 2:
            roots.append(-1)
            continue
        roots.append(next((index[tuple(row[:n])] for n in range(2, len(row)) if tuple(row[:n]) in index),
                          index[tuple(row)]))
    return roots


def shared_prefix_tokens(ids: Sequence[Sequence[int]]) -> int:
    """The tokens run to read every text's last-token state from its root's prefix states
    (:func:`continuation_roots`): each root's prefix once, then each text's tokens after it (texts of one token
    whole)."""
    roots = continuation_roots(ids)
    prefixes = sum(len(ids[r]) - 1 for r in set(roots) if r >= 0)
    return prefixes + sum(len(row) - (len(ids[r]) - 1 if r >= 0 else 0) for row, r in zip(ids, roots))


@torch.no_grad()
def prefix_states(model: torch.nn.Module, prefixes: Sequence[Sequence[int]], pad_id: int,
                  batch_size: int = 32, stop_block: torch.nn.Module | None = None) -> PrefixStates:
    """The prefix states of ``prefixes`` (token ids, each a prompt without its last token), from plain forward
    passes of ``model`` (no edit is active: the caller's hooks are not involved) in left-padded batches.

    With ``stop_block`` (one of the model's blocks) each pass stops after it: the states cover the layers up to it,
    which is all a pass that stops there too needs."""
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("a prompt of one token has no prefix to cache; run its passes whole")
    from transformers import DynamicCache

    def stop(module, args, output):
        raise _Stopped

    device = next(model.parameters()).device
    keys: list[tuple[Tensor, ...]] = []
    values: list[tuple[Tensor, ...]] = []
    for start in range(0, len(prefixes), batch_size):
        part = [list(p) for p in prefixes[start:start + batch_size]]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for i, p in enumerate(part):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)  # filled layer by layer, so a stopped pass leaves its layers
        handle = stop_block.register_forward_hook(stop) if stop_block is not None else None
        try:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  use_cache=True, **{_cache_kwarg(model): cache})
        except _Stopped:
            pass
        finally:
            if handle is not None:
                handle.remove()
        layers = _layer_tensors(cache)
        for i, p in enumerate(part):
            keys.append(tuple(k[i, :, width - len(p):].clone() for k, _ in layers))
            values.append(tuple(v[i, :, width - len(p):].clone() for _, v in layers))
    return PrefixStates(tuple(keys), tuple(values), tuple(len(p) for p in prefixes))


def suffix_inputs(model: torch.nn.Module, states: PrefixStates, rows: Sequence[int],
                  suffix_ids: Int[Tensor, "batch pos"], suffix_mask: Int[Tensor, "batch pos"]) -> dict:
    """Keyword arguments of ``model``'s forward over right-padded suffixes (``suffix_ids``, ``suffix_mask``) whose
    row ``i`` continues prompt ``rows[i]`` of ``states``: a fresh cache of those prefixes (left-padded, so no later
    pass changes ``states``), the attention mask over prefix and suffix, and each row's positions."""
    from transformers import DynamicCache

    rows = list(rows)
    if len(rows) != suffix_ids.shape[0]:
        raise ValueError(f"need one prompt row per suffix, got {len(rows)} rows for {suffix_ids.shape[0]} suffixes")
    device = next(model.parameters()).device
    lengths = [states.lengths[r] for r in rows]
    width = max(lengths)
    prefix_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        prefix_mask[i, width - n:] = 1
    offsets = torch.tensor(lengths)[:, None] + torch.arange(suffix_ids.shape[1])[None]
    kwargs = {"input_ids": suffix_ids.to(device), "position_ids": offsets.to(device),
              "attention_mask": torch.cat([prefix_mask, suffix_mask.cpu()], 1).to(device)}
    cache = DynamicCache(config=model.config)
    for layer in range(len(states.keys[rows[0]])):
        k = torch.stack([_left_pad(states.keys[r][layer], width) for r in rows])
        v = torch.stack([_left_pad(states.values[r][layer], width) for r in rows])
        cache.update(k, v, layer)
    kwargs[_cache_kwarg(model)] = cache
    return kwargs


def _left_pad(x: Tensor, width: int) -> Tensor:
    """``heads × n × head_dim`` padded with zeros before its positions to ``heads × width × head_dim``."""
    if x.shape[1] == width:
        return x
    return torch.cat([x.new_zeros(x.shape[0], width - x.shape[1], x.shape[2]), x], 1)


@contextlib.contextmanager
def replayed_blocks(blocks: torch.nn.ModuleList, layer: int, hidden: Float[Tensor, "batch pos d_model"],
                    template: object) -> Iterator[None]:
    """Within the block, ``blocks[:layer]`` return their input and ``blocks[layer]`` returns ``hidden`` (its output
    over the same inputs in a pass with no edit), each in the structure of ``template`` (an output of one of these
    blocks), without running: a pass costs the blocks above ``layer``. Hooks on the blocks still run, so an edit at
    ``layer`` acts on ``hidden``. The blocks' own ``forward`` is restored on exit, also on exceptions."""
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range for {len(blocks)} blocks")

    def passed(*args, **kwargs):
        given = args[0] if args else kwargs.get("hidden_states")
        return rewrap_block_output(template, given)

    def replayed(*args, **kwargs):
        given = args[0] if args else kwargs.get("hidden_states")
        if given is not None and tuple(given.shape) != tuple(hidden.shape):
            raise ValueError(f"the replayed states are {tuple(hidden.shape)}, the pass's {tuple(given.shape)}: "
                             "take them over the same suffixes")
        return rewrap_block_output(template, hidden)

    own = [block.__dict__.get("forward") for block in blocks[:layer + 1]]
    try:
        for block in blocks[:layer]:
            block.forward = passed
        blocks[layer].forward = replayed
        yield
    finally:
        for block, forward in zip(blocks[:layer + 1], own):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward
