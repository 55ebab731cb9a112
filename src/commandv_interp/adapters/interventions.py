"""Consumes nothing but shapes, produces residual-stream ReFT interventions (grouped per layer by
:class:`~commandv_interp.adapters.adapter.Adapter`).

Each intervention edits a block output ``h`` (``d_model`` wide) additively, ``h ↦ h + delta(h)``, through a
rank-``r`` bottleneck. Vectors are rows: ``W h + b`` is ``h @ W.T + b``. Parameter and state-dict names follow
pyreft's, so a pyreft ``intkey_*.bin`` loads with :meth:`Intervention.from_state_dict` and
:meth:`~torch.nn.Module.state_dict` writes what pyreft's own ``load_state_dict`` reads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from commandv_interp.types import Float, Tensor, check_choice

__all__ = ["Intervention", "NodiReFT", "DiReFT", "LoReFT", "NoReFT", "INTERVENTION_KINDS", "ACTIVATIONS",
           "make_intervention"]

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
"""``act`` names as in ``transformers.ACT2FN`` (pyreft's ``act_fn``); ``linear`` is the identity, pyreft's default."""

_ORIGINAL = "rotate_layer.parametrizations.weight.original"
_BASE = "rotate_layer.parametrizations.weight.0.base"


class Intervention(nn.Module):
    """Base class: ``forward(h) = h + delta(h)``; buffers ``embed_dim``/``interchange_dim`` as in pyvene."""

    kind: ClassVar[str] = ""
    pyreft_name: ClassVar[str] = ""

    def __init__(self, embed_dim: int, rank: int, act: str = "linear") -> None:
        super().__init__()
        if embed_dim < 1 or rank < 1:
            raise ValueError(f"embed_dim and rank must be >= 1, got embed_dim={embed_dim!r}, rank={rank!r}")
        check_choice("act", act, tuple(ACTIVATIONS))
        self.rank, self.act_name = int(rank), act
        self.act = ACTIVATIONS[act]()
        self.register_buffer("embed_dim", torch.tensor(int(embed_dim)))
        self.register_buffer("interchange_dim", torch.tensor(int(embed_dim)))

    @property
    def d_model(self) -> int:
        return int(self.embed_dim)

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The additive edit; ``forward(h) = h + delta(h)``."""
        raise NotImplementedError

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return h + self.delta(h)

    def project(self) -> None:
        """Restore constraints after an optimizer step (no-op unless the class has some)."""

    def _source(self, h: Tensor) -> Tensor:
        """``act(W h + b)`` computed in ``learned_source``'s dtype."""
        return self.act(self.learned_source(h.to(self.learned_source.weight.dtype)))

    @classmethod
    def _dims(cls, state: Mapping[str, Tensor]) -> tuple[int, int]:
        """``(embed_dim, rank)`` read off ``learned_source``'s weight (r × d)."""
        w = state.get("learned_source.weight", state.get("weight"))
        if w is None or w.ndim != 2:
            raise ValueError(f"{cls.pyreft_name} state dict lacks a 2-D learned_source weight (keys: {sorted(state)});"
                             " pass the intkey_*.bin of a pyreft intervention")
        return int(w.shape[1]), int(w.shape[0])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], act: str = "linear") -> Intervention:
        """Build the intervention a pyreft state dict describes, keeping every tensor's stored dtype.

        ``act`` is not stored in pyreft's state dicts; pass the one used in training (pyreft's default ``linear``).
        Tensors are copied, so later in-place training never touches ``state``.
        """
        embed_dim, rank = cls._dims(state)
        iv = cls._empty(embed_dim, rank, act, state)
        iv.load_state_dict({k: v.detach().clone() for k, v in state.items()}, assign=True)
        return iv

    @classmethod
    def _empty(cls, embed_dim: int, rank: int, act: str, state: Mapping[str, Tensor]) -> Intervention:
        return cls(embed_dim, rank, act)


class _Projected(Intervention):
    """Shared parts of NodiReFT/NoReFT: ``learned_source`` (W, b) and an unconstrained ``proj_layer`` (P, b_p)."""

    def __init__(self, embed_dim: int, rank: int, act: str = "linear", proj_bias: bool = True) -> None:
        super().__init__(embed_dim, rank, act)
        self.proj_layer = nn.Linear(embed_dim, rank, bias=proj_bias)
        self.learned_source = nn.Linear(embed_dim, rank)

    @classmethod
    def _empty(cls, embed_dim: int, rank: int, act: str, state: Mapping[str, Tensor]) -> Intervention:
        return cls(embed_dim, rank, act, proj_bias="proj_layer.bias" in state)


class NodiReFT(_Projected):
    """NodiReFT (Command-V's): ``h + act(W h + b) P``, ``W, b`` = ``learned_source``, ``P`` = ``proj_layer.weight`` (r × d).

    pyreft keys: ``embed_dim, interchange_dim, proj_layer.weight, proj_layer.bias, learned_source.weight,
    learned_source.bias``. ``proj_layer.bias`` (pyreft's ``add_bias``) is stored but does not enter the math.
    """

    kind, pyreft_name = "nodireft", "NodireftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        p = self.proj_layer.weight
        return (self._source(h).to(p.dtype) @ p).to(h.dtype)


class NoReFT(_Projected):
    """NoReFT: LoReFT without orthogonality, ``h + (act(W h + b) − (P h + b_p)) P``, ``P, b_p`` = ``proj_layer``.

    pyreft keys as :class:`NodiReFT`'s; without ``proj_layer.bias`` (pyreft ``add_bias=False``) ``b_p = 0``.
    """

    kind, pyreft_name = "noreft", "NoreftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        p = self.proj_layer.weight
        x = h.to(p.dtype)
        return ((self._source(h).to(p.dtype) - self.proj_layer(x)) @ p).to(h.dtype)


class _Rotated(Intervention):
    """Shared parts of DiReFT/LoReFT: ``R`` (r × d) with orthonormal rows, stored as ``rotate_layer`` (d × r) = ``Rᵀ``.

    ``rotate_layer`` is a plain parameter (pyreft keeps it under torch's orthogonal parametrization); training
    keeps it on the Stiefel manifold by a QR retraction after every step (:meth:`project`), so saved weights
    round-trip bit-exactly. Loading a parametrized state dict evaluates torch's parametrization once.
    """

    def __init__(self, embed_dim: int, rank: int, act: str = "linear") -> None:
        super().__init__(embed_dim, rank, act)
        if rank > embed_dim:
            raise ValueError(f"rank={rank} exceeds embed_dim={embed_dim}; orthonormal rows need rank <= embed_dim")
        self.rotate_layer = nn.Parameter(torch.empty(embed_dim, rank))
        nn.init.orthogonal_(self.rotate_layer)
        self.learned_source = nn.Linear(embed_dim, rank)

    @property
    def R(self) -> Float[Tensor, "rank d_model"]:
        return self.rotate_layer.T

    @torch.no_grad()
    def project(self) -> None:
        q, r = torch.linalg.qr(self.rotate_layer.float())
        self.rotate_layer.copy_((q * torch.sign(torch.diagonal(r))).to(self.rotate_layer.dtype))

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """Accept pyreft's layouts (see the subclass docstrings) as well as this module's own names."""
        sd = dict(state_dict)
        if "weight" in sd and "learned_source.weight" not in sd:
            sd["learned_source.weight"], sd["learned_source.bias"] = sd.pop("weight"), sd.pop("bias")
        if _ORIGINAL in sd:
            sd["rotate_layer"] = _evaluate_orthogonal(sd.pop(_ORIGINAL), sd.pop(_BASE, None))
        if "rotate_layer" not in sd:
            raise ValueError(f"{self.pyreft_name} state dict lacks 'rotate_layer' and {_ORIGINAL!r} "
                             f"(keys: {sorted(sd)}); pass the intkey_*.bin pyreft saved")
        sd.setdefault("embed_dim", self.embed_dim.clone())
        sd.setdefault("interchange_dim", self.interchange_dim.clone())
        return super().load_state_dict(sd, strict=strict, assign=assign)

    def _rotate_and_source(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(R, act(W h + b), h)``, the last two in ``R``'s dtype (pyreft casts the same way)."""
        r = self.R
        return r, self._source(h).to(r.dtype), h.to(r.dtype)


def _evaluate_orthogonal(original: Tensor, base: Tensor | None) -> Tensor:
    """The weight torch's default ``orthogonal`` parametrization of a ``d × r`` weight yields from its state.

    Evaluated in float32 when stored in a half type (torch's Householder product has no half kernel), then cast back.
    """
    if base is None:
        raise ValueError(f"parametrized rotate_layer state has {_ORIGINAL!r} but no {_BASE!r}; "
                         "re-save it with pyreft (torch's default use_trivialization=True)")
    work = original.dtype if original.dtype in (torch.float32, torch.float64) else torch.float32
    holder = nn.Module()
    holder.weight = nn.Parameter(torch.zeros(original.shape, dtype=work))
    holder = orthogonal(holder)
    holder.load_state_dict({"parametrizations.weight.original": original.to(work),
                            "parametrizations.weight.0.base": base.to(work)})
    with torch.no_grad():
        return holder.weight.detach().to(original.dtype)


def _parametrized_state(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(original, base)`` for which torch's orthogonal parametrization yields ``weight`` (d × r) bit-exactly.

    ``original = −I`` makes the parametrization's inner factor ``I[:, :r]``, so the result is ``base[:, :r]``;
    ``base`` is an orthogonal completion of ``weight`` whose first ``r`` columns are overwritten by ``weight``.
    """
    q, _ = torch.linalg.qr(weight.detach().double(), mode="complete")
    base = q.to(weight.dtype)
    base[:, : weight.shape[1]] = weight.detach()
    original = torch.zeros_like(weight.detach())
    original.diagonal().fill_(-1)
    return original, base


class DiReFT(_Rotated):
    """DiReFT: ``h + act(W h + b) R``, ``R`` (r × d) with orthonormal rows, ``R = rotate_layer.weightᵀ``.

    pyreft keys: ``embed_dim, interchange_dim, rotate_layer.parametrizations.weight.original,
    rotate_layer.parametrizations.weight.0.base, learned_source.weight, learned_source.bias``.
    """

    kind, pyreft_name = "direft", "DireftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        r, source, _ = self._rotate_and_source(h)
        return (source @ r).to(h.dtype)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = OrderedDict() if destination is None else destination
        original, base = _parametrized_state(self.rotate_layer)
        items = [("embed_dim", self.embed_dim), ("interchange_dim", self.interchange_dim), (_ORIGINAL, original),
                 (_BASE, base), ("learned_source.weight", self.learned_source.weight),
                 ("learned_source.bias", self.learned_source.bias)]
        for key, value in items:
            out[prefix + key] = value if keep_vars else value.detach()
        return out


class LoReFT(_Rotated):
    """LoReFT: ``h + (act(W h + b) − R h) R`` (= ``h + Rᵀ(W h + b − R h)`` in column form), R with orthonormal rows.

    pyreft keys (its own compact layout): ``weight, bias`` (= ``learned_source``), ``rotate_layer`` (d × r) = ``Rᵀ``.
    """

    kind, pyreft_name = "loreft", "LoreftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        r, source, x = self._rotate_and_source(h)
        return ((source - x @ r.T) @ r).to(h.dtype)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = OrderedDict() if destination is None else destination
        items = [("weight", self.learned_source.weight), ("bias", self.learned_source.bias),
                 ("rotate_layer", self.rotate_layer)]
        for key, value in items:
            out[prefix + key] = value if keep_vars else value.detach()
        return out


INTERVENTION_KINDS: dict[str, type[Intervention]] = {
    cls.kind: cls for cls in (NodiReFT, DiReFT, LoReFT, NoReFT)
} | {cls.pyreft_name: cls for cls in (NodiReFT, DiReFT, LoReFT, NoReFT)}
"""Short kind (``nodireft`` …) and pyreft class name (``NodireftIntervention`` …) → class."""


def make_intervention(kind: str, embed_dim: int, rank: int, act: str = "linear") -> Intervention:
    """A freshly initialized intervention of ``kind`` (seed torch before calling for reproducibility).

    ``proj_layer`` starts near zero so a new adapter starts close to the identity edit. NoReFT gets no
    ``proj_layer`` bias (pyreft ``add_bias=False``), so its edit stays of the form ``act(W'h + b) P``.

    >>> make_intervention("loreft", 8, 2).R.shape
    torch.Size([2, 8])
    """
    check_choice("kind", kind, tuple(INTERVENTION_KINDS))
    cls = INTERVENTION_KINDS[kind]
    iv = cls(embed_dim, rank, act, proj_bias=False) if cls is NoReFT else cls(embed_dim, rank, act)
    if hasattr(iv, "proj_layer"):
        with torch.no_grad():
            iv.proj_layer.weight.mul_(0.1)
    return iv
