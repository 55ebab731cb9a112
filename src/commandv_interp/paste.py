"""Stage 5 (paste): consumes a recipient :class:`ModelAccess`, a donor :class:`Adapter` and :class:`Converters`,
produces an edited recipient (context manager) or a compiled native recipient :class:`Adapter`.

At every mapped recipient layer ``l_R`` and selected position::

    h_R ← h_R + α · Σ_{l_D ↦ l_R} to_recipient.linear( adapter[l_D].delta( to_donor(h_R) ) )

Several donor layers mapped to one recipient layer add up. Positions are explicit (see
:data:`~commandv_interp.types.PositionRule`); per-row positions come from the attention mask.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from commandv_interp.access import EditContext, ModelAccess, open_model, prompt_position_mask
from commandv_interp.access.intrace import LowRankEdit
from commandv_interp.adapters import Adapter, Intervention
from commandv_interp.compile import check_adapter_pairing, compile_paste, linear_parts
from commandv_interp.converters import Converters, LinearConverter
from commandv_interp.types import POSITION_RULES, Bool, Float, Tensor, check_choice

__all__ = ["paste", "apply_adapter", "selected_positions", "pasted_delta_fn", "PastedDelta", "pasted_deltas", "delta_edit", "DeltaFn"]

DeltaFn = Callable[[Float[Tensor, "n d_model"]], Float[Tensor, "n d_model"]]
"""Maps the selected hidden states of one layer to the additive edit at those positions."""


def selected_positions(ctx: EditContext, hidden: Tensor, rule: str, k: int | None = None) -> Bool[Tensor, "batch pos"]:
    """Positions of ``hidden`` a rule edits in this pass (prompt pass: from the mask; decode: the new token)."""
    if ctx.step == 0:
        mask = prompt_position_mask(ctx.prompt_mask, rule, k)
        if mask.shape[1] != hidden.shape[1]:
            raise ValueError(f"prompt mask has {mask.shape[1]} positions but the block output has "
                             f"{hidden.shape[1]}; edits expect a batch made by ModelAccess.encode")
        return mask.to(hidden.device)
    on = rule.endswith("+decode")
    return torch.full(hidden.shape[:2], on, dtype=torch.bool, device=hidden.device)


def delta_edit(deltas: list[DeltaFn], rule: str, k: int | None, alpha: float):
    def edit(hidden: Tensor, ctx: EditContext) -> Tensor:
        sel = selected_positions(ctx, hidden, rule, k)
        if not bool(sel.any()):
            return hidden
        h = hidden[sel]
        total = sum(fn(h.float()) for fn in deltas)
        out = hidden.clone()
        out[sel] = h + (alpha * total).to(hidden.dtype)
        return out

    edit.acts_on_decode = rule.endswith("+decode")
    return edit


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


def pasted_delta_fn(intervention: Intervention, to_donor: LinearConverter, to_recipient: LinearConverter) -> DeltaFn:
    """The pasted edit of one donor layer (a :class:`PastedDelta`)."""
    return PastedDelta(intervention, to_donor, to_recipient)


def _placed(intervention: Intervention, device: torch.device) -> Intervention:
    return copy.deepcopy(intervention).to(device=device, dtype=torch.float32)


def _check_positions(positions: str, k: int | None) -> None:
    check_choice("positions", positions, POSITION_RULES)
    if positions == "first_last" and (k is None or k < 1):
        raise ValueError("positions='first_last' needs first_last_k >= 1")


@contextlib.contextmanager
def apply_adapter(
    model: ModelAccess | object, adapter: Adapter, positions: str | None = None, alpha: float = 1.0,
) -> Iterator[ModelAccess]:
    """Apply an adapter natively (on the model it was trained for, or a compiled paste).

    Args:
        model: the model (its ``d_model`` must equal the adapter's).
        adapter: one intervention per layer.
        positions: position rule (default: the adapter's own rule).
        alpha: scale of every delta.
    """
    access = open_model(model)
    rule = positions or adapter.positions
    _check_positions(rule, adapter.first_last_k)
    if adapter.d_model != access.d_model:
        raise ValueError(f"adapter has d_model={adapter.d_model} but {access.name!r} has d_model={access.d_model}; "
                         "paste it with converters instead")
    edits = {}
    for layer, iv in adapter.interventions.items():
        placed = _placed(iv, access.block_device(layer))
        edits[layer] = delta_edit([placed.delta], rule, adapter.first_last_k, alpha)
        edits[layer].low_rank = _low_rank_form(iv, rule, adapter.first_last_k, alpha)
    with access.edited(edits):
        yield access


def _low_rank_form(iv: Intervention, rule: str, k: int | None, alpha: float) -> tuple[LowRankEdit, ...] | None:
    """The intervention as the tensors a remote trace runs (None if its kind has no such form)."""
    try:
        w, b, p = linear_parts(iv)
    except ValueError:
        return None
    act = iv.act_name if iv.kind in ("nodireft", "direft") else "linear"
    return (LowRankEdit(w.float(), b.float(), (alpha * p).float(), act, rule, k),)


@contextlib.contextmanager
def paste(
    recipient: ModelAccess | object,
    adapter: Adapter,
    converters: Converters,
    positions: str = "last",
    alpha: float = 1.0,
    first_last_k: int | None = None,
) -> Iterator[ModelAccess]:
    """Paste a donor adapter into a recipient through converters (Command-V).

    Inside the ``with`` block every ``forward``/``generate``/``read`` of the recipient carries the pasted
    edit; on exit (also on exceptions) all hooks are gone and the recipient is unchanged.

    Args:
        recipient: the recipient model (``ModelAccess`` or anything ``open_model`` accepts).
        adapter: the donor's adapter (its layers must all be mapped by ``converters``).
        converters: fitted between the adapter's donor and this recipient.
        positions: ``last`` (paper: last prompt token, prompt pass only), ``last+decode``, ``all``,
            ``all+decode`` or ``first_last``.
        alpha: scale factor of the pasted delta (converters from a chained fit warn unless it is their
            ``chain_alpha``).
        first_last_k: ``k`` for ``first_last``.

    Example:
        >>> with paste(recipient, adapter, converters, positions="last"):  # doctest: +SKIP
        ...     texts = recipient.generate(recipient.encode(prompts))
    """
    access = open_model(recipient)
    _check_positions(positions, first_last_k)
    if not torch.isfinite(torch.tensor(alpha)):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    chain_alpha = converters.extra.get("chain_alpha")
    if chain_alpha is not None and not math.isclose(alpha, chain_alpha, rel_tol=1e-6):
        warnings.warn(f"these converters were chained at alpha={chain_alpha:g} but are pasted at alpha={alpha:g}: "
                      "later layers read states their converters were not fitted on; refit with "
                      f"fit_chained_interface_converters(..., alpha={alpha:g})", stacklevel=3)
    per_layer = pasted_deltas(access, adapter, converters)
    edits = {layer: delta_edit(fns, positions, first_last_k, alpha) for layer, fns in per_layer.items()}
    for layer, form in _compiled_forms(adapter, converters, positions, alpha, first_last_k).items():
        edits[layer].low_rank = form
    with access.edited(edits):
        yield access


def _compiled_forms(adapter: Adapter, converters: Converters, positions: str, alpha: float,
                    k: int | None) -> dict[int, tuple[LowRankEdit, ...] | None]:
    """Recipient layer → the paste's compiled low-rank form (what a remote trace runs), if it has one."""
    try:
        compiled = compile_paste(adapter, converters, positions, alpha, k)
    except ValueError:
        return {}
    return {layer: (LowRankEdit(iv.learned_source.weight, iv.learned_source.bias, iv.proj_layer.weight,
                                iv.act_name, positions, k),)
            for layer, iv in compiled.interventions.items()}


def pasted_deltas(recipient: ModelAccess | object, adapter: Adapter, converters: Converters) -> dict[int, list[DeltaFn]]:
    """Recipient layer → the pasted delta functions acting there (one per donor layer mapped to it), each
    placed on that layer's device. Refuses converters fitted for another donor or recipient."""
    access = open_model(recipient)
    if converters.d_donor != adapter.d_model:
        raise ValueError(f"converters map a donor of width {converters.d_donor} but the adapter has "
                         f"d_model={adapter.d_model}; derive converters from this adapter's donor")
    if converters.d_recipient != access.d_model:
        raise ValueError(f"converters map a recipient of width {converters.d_recipient} but {access.name!r} has "
                         f"d_model={access.d_model}; derive converters for this recipient")
    if converters.recipient_config_hash != access.config_hash:
        raise ValueError(f"converters were fitted for recipient {converters.recipient_model!r} (config hash "
                         f"{converters.recipient_config_hash!r}) but {access.name!r} has config hash "
                         f"{access.config_hash!r}; derive converters from this recipient's profile")
    adapter_hash = adapter.metadata.get("config_hash")
    if adapter_hash is not None and adapter_hash != converters.donor_config_hash:
        raise ValueError(f"the adapter was trained on a model with config hash {adapter_hash!r} but the converters' "
                         f"donor has {converters.donor_config_hash!r}; profile the adapter's own donor")
    check_adapter_pairing(adapter, converters)
    per_layer: dict[int, list[DeltaFn]] = {}
    for donor_layer, iv in sorted(adapter.interventions.items()):
        pair = converters.for_donor_layer(donor_layer)
        device = access.block_device(pair.recipient_layer)
        fn = pasted_delta_fn(_placed(iv, device), pair.to_donor.to(device, torch.float32),
                             pair.to_recipient.to(device, torch.float32))
        per_layer.setdefault(pair.recipient_layer, []).append(fn)
    return per_layer
