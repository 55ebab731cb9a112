"""Consumes a :class:`ModelAccess`, produces a cheap digest of its weights that does not depend on
the dtype it was loaded in.

The config hash tells models of another shape apart; this digest tells apart two models of the same config with
other weights (a shuffled or re-trained checkpoint). It reads the input embedding matrix and the first block's
parameters outside its attention of the underlying Hugging Face model (the same tensors on both backends: a
TransformerBridge re-arranges some attention projections, e.g. it splits GPT-2's fused ``c_attn``), takes ``SAMPLES`` values of
each at evenly spaced flat positions and hashes their sign pattern with the names and shapes. A sign survives a
cast to bfloat16 or float16 (both round to nearest and keep the sign), so a float32, bfloat16 or float16 load of
one checkpoint gives one digest; a permutation or another training run flips about half of the sampled signs.
"""

from __future__ import annotations

import hashlib

import torch

from commandv_interp.access.base import ModelAccess
from commandv_interp.access.blocks import find_block_path

__all__ = ["weights_digest", "SAMPLES"]

SAMPLES = 256  # values read per tensor: a mismatch is missed with odds 2^-128 or less when weights are re-drawn


def _hf_module(access: ModelAccess) -> torch.nn.Module:
    hf = getattr(access, "_hf", None)
    return hf if isinstance(hf, torch.nn.Module) else access.torch_module


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The embedding matrix and block 0's parameters, with names relative to where they sit."""
    out = []
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is not None and getattr(embed, "weight", None) is not None:
        out.append(("embed", embed.weight))
    try:
        block = model.get_submodule(find_block_path(model))[0]
    except (ValueError, AttributeError, IndexError, TypeError):
        block = None
    if block is not None:
        # a TransformerBridge wraps each HF submodule as `<name>._original_component`: the names are HF's once removed
        named = ((name.replace("._original_component", "").replace("_original_component.", ""), p)
                 for name, p in block.named_parameters())
        named = [(name, p) for name, p in named if not _in_attention(name)]
        out += [(f"block0.{name}", p) for name, p in sorted(named, key=lambda item: item[0])]
    return out


def _in_attention(name: str) -> bool:
    """Whether a block parameter belongs to the attention (``attn.*``, ``self_attn.*``, ``attention.*``)."""
    first = name.split(".")[0].lower()
    return "attn" in first or "attention" in first


def weights_digest(access: ModelAccess) -> str | None:
    """16 hex digits over the sign pattern of sampled weights (embedding and first block); ``None`` where those
    weights are not in memory (offloaded to ``meta``), so no comparison is made.

    Args:
        access: the model.

    Returns:
        The digest, equal for the same checkpoint loaded in float32, bfloat16 or float16, on either backend.
    """
    tensors = _tensors(_hf_module(access))
    if not tensors or any(t.is_meta for _, t in tensors):
        return None
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in tensors:
            flat = t.detach().reshape(-1)
            idx = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel())).long().to(flat.device)
            signs = (flat[idx] > 0).to("cpu", torch.uint8)
            h.update(f"{name}:{list(t.shape)}:".encode())
            h.update(signs.numpy().tobytes())
    return h.hexdigest()[:16]
