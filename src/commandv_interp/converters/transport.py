"""Consumes a recipient :class:`ModelAccess`, a donor :class:`Adapter` and :class:`Converters`,
produces the pasted delta functions, recipient layer by recipient layer (what :func:`~commandv_interp.paste.paste`
installs and the chained fit records under)::

    δ_R(h_R) = to_recipient.linear( adapter[l_D].delta( to_donor(h_R) ) )

Several donor layers mapped to one recipient layer add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter, Intervention
from commandv_interp.adapters.edits import DeltaFn, check_positions, delta_edit, placed
from commandv_interp.converters.artifact import Converters, LinearConverter
from commandv_interp.types import Float, PositionRule, Tensor

__all__ = ["PastedDelta", "pasted_deltas", "pasted_edits"]


@dataclass(frozen=True)
class PastedDelta:
    """``h_R ↦ to_recipient.linear(intervention.delta(to_donor(h_R)))``: the pasted edit of one donor layer.

    Its pieces are placed once, on the device of the recipient block they act at (see :func:`pasted_deltas`).
    """

    intervention: Intervention
    to_donor: LinearConverter
    to_recipient: LinearConverter

    def __call__(self, h: Float[Tensor, "n d_recipient"]) -> Float[Tensor, "n d_recipient"]:
        return self.to_recipient.linear(self.intervention.delta(self.to_donor(h)))


def pasted_deltas(recipient: ModelAccess, adapter: Adapter, converters: Converters) -> dict[int, list[DeltaFn]]:
    """Recipient layer → the pasted delta functions acting there (one per donor layer mapped to it), each placed on
    that layer's device in float32. Refuses converters fitted for another adapter, donor or recipient."""
    converters.check_adapter(adapter)
    converters.check_recipient(recipient)
    per_layer: dict[int, list[DeltaFn]] = {}
    with torch.no_grad():
        for donor_layer, iv in sorted(adapter.interventions.items()):
            pair = converters.for_donor_layer(donor_layer)
            device = recipient.block_device(pair.recipient_layer)
            fn = PastedDelta(placed(iv, device), pair.to_donor.to(device, torch.float32),
                             pair.to_recipient.to(device, torch.float32))
            per_layer.setdefault(pair.recipient_layer, []).append(fn)
    return per_layer


def pasted_edits(recipient: ModelAccess, adapter: Adapter, converters: Converters, positions: PositionRule = "last",
                 alpha: float = 1.0, first_last_k: int | None = None) -> dict:
    """Recipient layer → the edit adding ``α`` times the pasted deltas at the positions ``positions`` selects."""
    check_positions(positions, first_last_k)
    return {layer: delta_edit(fns, positions, first_last_k, alpha)
            for layer, fns in pasted_deltas(recipient, adapter, converters).items()}
