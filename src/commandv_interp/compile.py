"""Stage 5 (paste): consumes a donor :class:`Adapter` and :class:`Converters`, produces a native recipient :class:`Adapter`.

Every supported intervention has the form ``delta(x) = act(x Wᵀ + b) P`` in donor space (LoReFT/NoReFT with a
linear ``act``: ``W ← W − R``, ``P = R``). With ``x = A h + c`` (``to_donor``) and the delta mapped back by
``M`` (``to_recipient`` linear part), the pasted edit is itself a recipient-space NodiReFT::

    W' = W A,   b' = W c + b,   P' = α P Mᵀ

Several donor layers mapped to one recipient layer are concatenated along the rank. Cost per token is
``O(d_R · r)`` instead of ``O(d_R · d_D)``.
"""

from __future__ import annotations

import torch

from commandv_interp.adapters import Adapter, DiReFT, Intervention, LoReFT, NodiReFT, NoReFT
from commandv_interp.converters import Converters
from commandv_interp.types import POSITION_RULES, Float, Tensor, check_choice

__all__ = ["compile_paste", "linear_parts"]


def linear_parts(iv: Intervention) -> tuple[Float[Tensor, "rank d"], Float[Tensor, " rank"], Float[Tensor, "rank d"]]:
    """``(W, b, P)`` with ``iv.delta(x) = act(x Wᵀ + b) P`` (float64)."""
    w = iv.learned_source.weight.double()
    b = iv.learned_source.bias.double()
    if isinstance(iv, NodiReFT):
        return w, b, iv.proj_layer.weight.double()
    if isinstance(iv, DiReFT):
        return w, b, iv.R.double()
    if isinstance(iv, (LoReFT, NoReFT)):
        if iv.act_name != "linear":
            raise ValueError(f"{iv.kind} with act={iv.act_name!r} is not compilable (act(Wh+b) − Rh is not of "
                             "the form act(W'h+b')); use paste() instead")
        if isinstance(iv, LoReFT):
            p = iv.R.double()
        else:  # NoReFT subtracts P h + b_p
            p = iv.proj_layer.weight.double()
            if iv.proj_layer.bias is not None:
                b = b - iv.proj_layer.bias.double()
        return w - p, b, p
    raise ValueError(f"cannot compile intervention kind {iv.kind!r}")


def check_adapter_pairing(adapter: Adapter, converters: Converters) -> None:
    """Refuse converters fitted for one adapter (``method="interface"``) when pasting another."""
    wanted = converters.extra.get("adapter_digest")
    if wanted is not None and wanted != adapter.digest():
        raise ValueError(f"these {converters.method!r} converters were fitted for the adapter with digest {wanted!r}, "
                         f"not for this one ({adapter.digest()!r}); fit_interface_converters(adapter, ...) for it")


def compile_paste(adapter: Adapter, converters: Converters, positions: str = "last", alpha: float = 1.0,
                  first_last_k: int | None = None) -> Adapter:
    """The pasted edit as a native recipient :class:`Adapter` of NodiReFT interventions (float32).

    Applying it with :func:`~commandv_interp.paste.apply_adapter` gives the same outputs as
    :func:`~commandv_interp.paste.paste` with the same ``positions`` and ``alpha``.
    """
    check_choice("positions", positions, POSITION_RULES)
    if converters.d_donor != adapter.d_model:
        raise ValueError(f"converters map a donor of width {converters.d_donor} but the adapter has "
                         f"d_model={adapter.d_model}")
    check_adapter_pairing(adapter, converters)
    grouped: dict[int, list[tuple[str, Tensor, Tensor, Tensor]]] = {}
    for donor_layer, iv in sorted(adapter.interventions.items()):
        pair = converters.for_donor_layer(donor_layer)
        w, b, p = linear_parts(iv)
        a = pair.to_donor.weight.double()
        c = pair.to_donor.bias.double() if pair.to_donor.bias is not None else torch.zeros(a.shape[0], dtype=a.dtype)
        m = pair.to_recipient.weight.double()
        grouped.setdefault(pair.recipient_layer, []).append((iv.act_name if iv.kind in ("nodireft", "direft")
                                                             else "linear", w @ a, w @ c + b, alpha * p @ m.T))
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
            "donor_model": converters.donor_model, "recipient_model": converters.recipient_model, "alpha": alpha}
    return Adapter(interventions, positions=positions, first_last_k=first_last_k, metadata=meta)
