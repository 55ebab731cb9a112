"""Consumes token-id rows or a tokenizer's output, produces a :class:`Batch`: the padded ids and attention mask
every :class:`~commandv_interp.access.ModelAccess` method takes (re-exported by :mod:`commandv_interp.access.base`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from commandv_interp.access.positions import last_token_index
from commandv_interp.types import Int, Tensor

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """Token ids and attention mask of a padded batch of prompts."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    @property
    def last_index(self) -> Int[Tensor, " batch"]:
        """Position of each row's last prompt token (left or right padding)."""
        return last_token_index(self.attention_mask)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))

    @classmethod
    def right_padded(cls, rows: Sequence[Sequence[int]], pad_id: int | None) -> "Batch":
        """Token-id rows padded on the right with ``pad_id`` (0 when None), masked (on the CPU, as :meth:`encode`'s).

        >>> b = Batch.right_padded([[5, 6], [7]], 0)
        >>> b.input_ids.tolist(), b.attention_mask.tolist()
        ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
        """
        ids = torch.full((len(rows), max(len(r) for r in rows)), 0 if pad_id is None else pad_id, dtype=torch.long,
                         device="cpu")
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long, device="cpu")
            mask[i, :len(r)] = 1
        return cls(ids, mask)

    def left_padded(self) -> "Batch":
        """The same prompts with each row's padding moved to its start (a left-padded batch is returned as is).

        >>> b = Batch(torch.tensor([[5, 6, 0], [7, 8, 9]]), torch.tensor([[1, 1, 0], [1, 1, 1]])).left_padded()
        >>> b.input_ids.tolist(), b.attention_mask.tolist()
        ([[0, 5, 6], [7, 8, 9]], [[0, 1, 1], [1, 1, 1]])
        """
        order = torch.argsort(self.attention_mask.long(), dim=1, stable=True)  # padding first, tokens in order
        return Batch(self.input_ids.gather(1, order), self.attention_mask.gather(1, order))
