"""Consumes an :class:`Intervention`, produces its linear form ``delta(x) = act(x Wᵀ + b) P``.

Every linear-source kind has that form in its own space: NodiReFT and DiReFT directly (``P`` is the projection,
resp. ``R``); LoReFT/NoReFT with a linear ``act`` as ``W ← W − R``, ``P = R`` (NoReFT subtracts ``P h + b_p``).
Converters fitted to an adapter's interface read ``W`` and ``P``; a compiled paste composes them with converters.
"""

from __future__ import annotations

from commandv_interp.adapters.interventions import DiReFT, Intervention, LoReFT, NodiReFT, NoReFT
from commandv_interp.types import Float, Tensor

__all__ = ["has_linear_form", "linear_parts", "read_activation"]


def linear_parts(iv: Intervention) -> tuple[Float[Tensor, "rank d"], Float[Tensor, " rank"], Float[Tensor, "rank d"]]:
    """``(W, b, P)`` with ``iv.delta(x) = act(x Wᵀ + b) P`` (float64, detached).

    Raises:
        ValueError: LoReFT/NoReFT with a non-linear ``act`` (``act(Wh+b) − Rh`` has no such form), or an unknown kind.
    """
    w = iv.learned_source.weight.detach().double()
    b = iv.learned_source.bias.detach().double()
    if isinstance(iv, NodiReFT):
        return w, b, iv.proj_layer.weight.detach().double()
    if isinstance(iv, DiReFT):
        return w, b, iv.R.detach().double()
    if isinstance(iv, (LoReFT, NoReFT)):
        if iv.act_name != "linear":
            raise ValueError(f"{iv.kind} with act={iv.act_name!r} has no linear form (act(Wh+b) − Rh is not of "
                             "the form act(W'h+b')); paste it with paste() and converters fitted over all dimensions")
        if isinstance(iv, LoReFT):
            p = iv.R.detach().double()
        else:  # NoReFT subtracts P h + b_p
            p = iv.proj_layer.weight.detach().double()
            if iv.proj_layer.bias is not None:
                b = b - iv.proj_layer.bias.detach().double()
        return w - p, b, p
    raise ValueError(f"intervention kind {iv.kind!r} has no linear form")


def has_linear_form(iv: Intervention) -> bool:
    """Whether :func:`linear_parts` gives ``iv``'s delta exactly."""
    if isinstance(iv, (NodiReFT, DiReFT)):
        return True
    return isinstance(iv, (LoReFT, NoReFT)) and iv.act_name == "linear"


def read_activation(iv: Intervention) -> str:
    """The ``act`` of the linear form: the intervention's own for NodiReFT/DiReFT, ``linear`` otherwise."""
    return iv.act_name if iv.kind in ("nodireft", "direft") else "linear"
