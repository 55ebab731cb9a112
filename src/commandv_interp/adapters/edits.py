"""Consumes an :class:`Adapter` (or any per-layer delta functions) and a position rule, produces
the :data:`~commandv_interp.access.EditFn` edits that :meth:`ModelAccess.edited` installs.

An edit adds ``α · Σ delta(h)`` to the block output at the positions its rule selects: on the prompt pass from the
attention mask (left or right padding), on decode steps the new token when the rule ends in ``+decode``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

import torch

from commandv_interp.access import EditContext, ModelAccess, prompt_position_mask
from commandv_interp.access.intrace import LowRankEdit
from commandv_interp.access.fingerprint import weights_digest
from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.interventions import Intervention
from commandv_interp.adapters.linear_form import has_linear_form, linear_parts, read_activation
from commandv_interp.types import POSITION_RULES, Bool, Float, PositionRule, Tensor, check_choice

__all__ = ["DeltaEdit", "DeltaFn", "adapter_edits", "check_positions", "delta_edit", "placed", "selected_positions"]

DeltaFn = Callable[[Float[Tensor, "n d_model"]], Float[Tensor, "n d_model"]]
"""Maps the selected hidden states of one layer to the additive edit at those positions."""


def check_positions(positions: PositionRule, k: int | None) -> None:
    """Refuse an unknown rule, and ``first_last`` without ``k ≥ 1``."""
    check_choice("positions", positions, POSITION_RULES)
    if positions == "first_last" and (k is None or k < 1):
        raise ValueError("positions='first_last' needs first_last_k >= 1")


def selected_positions(ctx: EditContext, hidden: Tensor, rule: PositionRule,
                       k: int | None = None) -> Bool[Tensor, "batch pos"]:
    """Positions of ``hidden`` a rule edits in this pass (prompt pass: from the mask; decode: the new token)."""
    if ctx.step == 0:
        mask = prompt_position_mask(ctx.prompt_mask, rule, k)
        if mask.shape[1] != hidden.shape[1]:
            raise ValueError(f"prompt mask has {mask.shape[1]} positions but the block output has "
                             f"{hidden.shape[1]}; edits expect a batch made by ModelAccess.encode")
        return mask.to(hidden.device)
    on = rule.endswith("+decode")
    return torch.full(hidden.shape[:2], on, dtype=torch.bool, device=hidden.device)


class DeltaEdit:
    """The edit ``h ← h + α Σ_f f(h)`` at the positions ``rule`` selects: computed in float32 and rounded once to
    the model's dtype (as pyreft adds its edit), so in bf16 it is the float32 edit of the same state, rounded.

    Attributes:
        acts_on_decode: whether decode steps are edited (False lets generation skip them).
        low_rank: the same edit as :class:`~commandv_interp.access.intrace.LowRankEdit` tensors (what a remote trace
            runs instead of this function), built from ``low_rank_factory`` on first access only; None without one.
    """

    def __init__(self, deltas: Sequence[DeltaFn], rule: PositionRule, k: int | None, alpha: float,
                 low_rank_factory: Callable[[], tuple[LowRankEdit, ...] | None] | None = None) -> None:
        self.deltas, self.rule, self.k, self.alpha = tuple(deltas), rule, k, alpha
        self.acts_on_decode = rule.endswith("+decode")
        self._factory = low_rank_factory

    @functools.cached_property
    def low_rank(self) -> tuple[LowRankEdit, ...] | None:
        if self._factory is None:
            return None
        with torch.no_grad():
            return self._factory()

    def __call__(self, hidden: Tensor, ctx: EditContext) -> Tensor:
        sel = selected_positions(ctx, hidden, self.rule, self.k)
        if not bool(sel.any()):
            return hidden
        h = hidden[sel]
        total = sum(fn(h.float()) for fn in self.deltas)
        out = hidden.clone()
        wide = torch.promote_types(hidden.dtype, torch.float32)  # float32, or a float64 model's own dtype
        out[sel] = (h.to(wide) + self.alpha * total).to(hidden.dtype)  # one rounding to the model's dtype, as pyreft
        return out


def delta_edit(deltas: Sequence[DeltaFn], rule: PositionRule, k: int | None, alpha: float,
               low_rank_factory: Callable[[], tuple[LowRankEdit, ...] | None] | None = None) -> DeltaEdit:
    """A :class:`DeltaEdit` (see there)."""
    return DeltaEdit(deltas, rule, k, alpha, low_rank_factory)


def placed(intervention: Intervention, device: torch.device) -> Intervention:
    """A float32 copy of ``intervention`` on ``device`` that autograd does not track (the input is untouched)."""
    return copy.deepcopy(intervention).to(device=device, dtype=torch.float32).requires_grad_(False)


def low_rank_form(iv: Intervention, rule: PositionRule, k: int | None, alpha: float) -> tuple[LowRankEdit, ...] | None:
    """The intervention as the tensors a remote trace runs (None if its kind has no linear form)."""
    if not has_linear_form(iv):
        return None
    w, b, p = linear_parts(iv)
    return (LowRankEdit(w.float(), b.float(), (alpha * p).float(), read_activation(iv), rule, k),)


def adapter_edits(access: ModelAccess, adapter: Adapter, positions: PositionRule | None = None,
                  alpha: float = 1.0) -> dict:
    """Layer → the edit applying ``adapter`` natively on ``access`` (its ``d_model`` must be the adapter's).

    ``positions`` defaults to the adapter's own rule; a different one is refused unless given explicitly.
    """
    rule = positions or adapter.positions
    check_positions(rule, adapter.first_last_k)
    adapter.check_positions(rule)
    adapter.check_model(access.name, access.n_layers, access.d_model, access.config_hash, weights_digest(access))
    edits = {}
    with torch.no_grad():
        for layer, iv in adapter.interventions.items():
            edits[layer] = delta_edit([placed(iv, access.block_device(layer)).delta], rule, adapter.first_last_k,
                                      alpha, functools.partial(low_rank_form, iv, rule, adapter.first_last_k, alpha))
    return edits
