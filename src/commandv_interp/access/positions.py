"""Consumes attention masks, produces per-row token positions.

Pure tensor logic shared by both backends: where the last prompt token of each row is, and which
positions a :data:`~commandv_interp.types.PositionRule` selects. Correct for left- and right-padded batches.
"""

from __future__ import annotations

import torch

from commandv_interp.types import Bool, Float, Int, Tensor

__all__ = ["last_token_index", "gather_rows", "prompt_position_mask"]


def last_token_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of the last non-padding token of each row (works for left and right padding).

    >>> last_token_index(torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])).tolist()
    [1, 2, 2]
    """
    mask = attention_mask.long()
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be 2-D (batch, pos), got shape {tuple(mask.shape)!r}")
    if (mask.sum(dim=1) == 0).any():
        raise ValueError("attention_mask has a row with no real token; drop empty prompts before encoding")
    n_pos = mask.shape[1]
    return (n_pos - 1) - mask.flip(dims=[1]).argmax(dim=1)


def gather_rows(
    hidden: Float[Tensor, "batch pos d_model"], index: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_model"]:
    """``hidden[b, index[b]]`` for every row ``b``."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index.to(hidden.device)]


def prompt_position_mask(
    attention_mask: Int[Tensor, "batch pos"], rule: str, k: int | None = None
) -> Bool[Tensor, "batch pos"]:
    """Boolean mask of the prompt positions a rule selects on the prompt pass.

    ``last*`` selects the last real token per row; ``all*`` every real token; ``first_last`` the
    first ``k`` and last ``k`` real tokens of each row.

    >>> prompt_position_mask(torch.tensor([[0, 1, 1, 1]]), "first_last", k=1).int().tolist()
    [[0, 1, 0, 1]]
    """
    mask = attention_mask.bool()
    if rule.startswith("last"):
        out = torch.zeros_like(mask)
        out[torch.arange(mask.shape[0], device=mask.device), last_token_index(attention_mask)] = True
        return out
    if rule.startswith("all"):
        return mask.clone()
    if rule == "first_last":
        if k is None or k < 1:
            raise ValueError(f"first_last needs k >= 1, got k={k!r}")
        rank_from_start = mask.long().cumsum(dim=1)  # 1-based order of each real token
        n_real = mask.long().sum(dim=1, keepdim=True)
        return mask & ((rank_from_start <= k) | (rank_from_start > n_real - k))
    raise ValueError(f"unknown position rule {rule!r}")
