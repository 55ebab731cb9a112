"""Consumes a donor :class:`Adapter` and :class:`Converters`, produces a native recipient :class:`Adapter`.

Every supported intervention has the form ``delta(x) = act(x Wᵀ + b) P`` in donor space (LoReFT/NoReFT with a
linear ``act``: ``W ← W − R``, ``P = R``). With ``x = A h + c`` (``to_donor``) and the delta mapped back by
``M`` (``to_recipient`` linear part), the pasted edit is itself a recipient-space NodiReFT::

    W' = W A,   b' = W c + b,   P' = α P Mᵀ

Several donor layers mapped to one recipient layer are concatenated along the rank. Cost per token is
``O(d_R · r)`` instead of ``O(d_R · d_D)``.
"""

from __future__ import annotations

import torch

from commandv_interp.adapters import Adapter, NodiReFT
from commandv_interp.adapters.linear_form import linear_parts, read_activation
from commandv_interp.converters import Converters
from commandv_interp.types import POSITION_RULES, PositionRule, Tensor, check_choice
from commandv_interp.validation import check_alpha

__all__ = ["compile_paste"]


def compile_paste(adapter: Adapter, converters: Converters, positions: PositionRule = "last", alpha: float = 1.0,
                  first_last_k: int | None = None) -> Adapter:
    """The pasted edit as a native recipient :class:`Adapter` of NodiReFT interventions (float32).

    Applying it with :func:`~commandv_interp.paste.apply_adapter` gives the same outputs as
    :func:`~commandv_interp.paste.paste` with the same ``positions`` and ``alpha``.
    """
    check_choice("positions", positions, POSITION_RULES)
    check_alpha(alpha)
    adapter.check_positions(positions)
    converters.check_adapter(adapter)
    grouped: dict[int, list[tuple[str, Tensor, Tensor, Tensor]]] = {}
    with torch.no_grad():
        for donor_layer, iv in sorted(adapter.interventions.items()):
            pair = converters.for_donor_layer(donor_layer)
            w, b, p = linear_parts(iv)
            to_donor, to_recipient = pair.to_donor.to(dtype=torch.float64), pair.to_recipient.to(dtype=torch.float64)
            c = to_donor.bias if to_donor.bias is not None else torch.zeros(to_donor.d_out, dtype=torch.float64)
            # W' = W A and P' = α P Mᵀ, both from the factored converters: no d_R × d_D product is formed
            grouped.setdefault(pair.recipient_layer, []).append(
                (read_activation(iv), to_donor.pullback(w), w @ c + b, alpha * to_recipient.linear(p)))
    interventions = {}
    for layer, parts in grouped.items():
        acts = {act for act, *_ in parts}
        if len(acts) != 1:
            raise ValueError(f"donor layers mapped to recipient layer {layer} use different activations {acts}")
        w = torch.cat([x[1] for x in parts]); b = torch.cat([x[2] for x in parts]); p = torch.cat([x[3] for x in parts])
        iv = NodiReFT(converters.d_recipient, w.shape[0], act=acts.pop(), proj_bias=False)
        with torch.no_grad():
            iv.learned_source.weight.copy_(w.float()); iv.learned_source.bias.copy_(b.float())
            iv.proj_layer.weight.copy_(p.float())
        interventions[layer] = iv.requires_grad_(False)
    meta = {"compiled_from": adapter.metadata, "converters_method": converters.method,
            "donor_model": converters.donor_model, "recipient_model": converters.recipient_model, "alpha": alpha,
            "config_hash": converters.recipient_config_hash}  # the compiled adapter is the recipient's: checked there
    if isinstance(converters.extra.get("recipient_weights_digest"), str):
        meta["weights_digest"] = converters.extra["recipient_weights_digest"]
    return Adapter(interventions, positions=positions, first_last_k=first_last_k, metadata=meta)
