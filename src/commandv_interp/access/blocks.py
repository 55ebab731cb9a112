"""Consumes a Hugging Face causal LM, produces the path of its decoder blocks.

Architectures name their block list differently (``model.layers``, ``transformer.h``,
``gpt_neox.layers`` ...). We find it structurally: the ``ModuleList`` whose length is the
config's number of hidden layers.
"""

from __future__ import annotations

import torch

__all__ = ["find_block_path", "unwrap_block_output", "rewrap_block_output"]

_KNOWN_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")


def find_block_path(model: torch.nn.Module) -> str:
    """Dotted attribute path of the decoder block ``ModuleList``.

    Raises:
        ValueError: if no unique block list is found (name the model class in the message).
    """
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    modules = dict(model.named_modules())
    for path in _KNOWN_PATHS:
        if isinstance(modules.get(path), torch.nn.ModuleList):
            return path
    candidates = [
        name for name, mod in modules.items()
        if isinstance(mod, torch.nn.ModuleList) and (n_layers is None or len(mod) == n_layers)
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"cannot locate the decoder blocks of {type(model).__name__}: candidates {candidates!r}; "
            "pass a standard Hugging Face causal LM (e.g. *ForCausalLM)"
        )
    return candidates[0]


def unwrap_block_output(output: object) -> torch.Tensor:
    """Hidden states from a block output that may be a tensor or a tuple whose first item is one."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected block output type {type(output).__name__}; expected a tensor or a tuple")


def rewrap_block_output(original: object, hidden: torch.Tensor) -> object:
    """Put ``hidden`` back into the structure the block returned."""
    if isinstance(original, torch.Tensor):
        return hidden
    return (hidden,) + tuple(original[1:])
