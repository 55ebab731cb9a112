"""Stage 5 (adapters): consumes nothing but shapes, produces residual-stream ReFT interventions and :class:`Adapter`.

Each intervention edits a block output ``h`` (``d_model`` wide) additively, ``h ↦ h + delta(h)``, through a
rank-``r`` bottleneck. Parameter names follow pyreft's so state dicts load with no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from commandv_interp.types import POSITION_RULES, Float, Tensor, check_choice

__all__ = ["Intervention", "NodiReFT", "DiReFT", "LoReFT", "NoReFT", "Adapter", "INTERVENTION_KINDS",
           "ACTIVATIONS", "make_intervention"]

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


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
        raise NotImplementedError

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return h + self.delta(h)

    def project(self) -> None:
        """Restore constraints after an optimizer step (no-op unless the class has some)."""

    def _source(self, h: Tensor) -> Tensor:
        h = h.to(self.learned_source.weight.dtype)
        return self.act(self.learned_source(h))


class NodiReFT(Intervention):
    """NodiReFT (the paper's): ``h + act(W h + b) P`` with ``W, b`` = ``learned_source``, ``P`` = ``proj_layer.weight`` (r × d).

    ``proj_layer.bias`` exists in pyreft's state dicts but does not enter the math.
    """

    kind, pyreft_name = "nodireft", "NodireftIntervention"

    def __init__(self, embed_dim: int, rank: int, act: str = "linear", proj_bias: bool = True) -> None:
        super().__init__(embed_dim, rank, act)
        self.proj_layer = nn.Linear(embed_dim, rank, bias=proj_bias)
        self.learned_source = nn.Linear(embed_dim, rank)

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return (self._source(h) @ self.proj_layer.weight).to(h.dtype)


class _Rotated(Intervention):
    """Shared parts of DiReFT/LoReFT: ``R`` (r × d) with orthonormal rows, stored as ``rotate_layer`` (d × r).

    ``rotate_layer`` is a plain parameter; training keeps it on the Stiefel manifold by a QR retraction after
    every step (:meth:`project`), so saved weights round-trip bit-exactly.
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

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        sd = dict(state_dict)
        if "weight" in sd and "learned_source.weight" not in sd:  # pyreft LoReFT's own layout
            sd["learned_source.weight"], sd["learned_source.bias"] = sd.pop("weight"), sd.pop("bias")
        if "rotate_layer" not in sd:
            raise ValueError(f"{self.kind} state dict lacks 'rotate_layer' (keys: {sorted(sd)}); parametrized "
                             "pyreft checkpoints must be re-saved with the plain rotate weight")
        sd.setdefault("embed_dim", self.embed_dim)
        sd.setdefault("interchange_dim", self.interchange_dim)
        return super().load_state_dict(sd, strict=strict, assign=assign)


class DiReFT(_Rotated):
    """DiReFT: ``h + act(W h + b) R`` (equivalently ``h + Rᵀ act(W h + b)`` in column form), R with orthonormal rows."""

    kind, pyreft_name = "direft", "DireftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return (self._source(h) @ self.R).to(h.dtype)


class LoReFT(_Rotated):
    """LoReFT: ``h + Rᵀ(act(W h + b) − R h)``, R (r × d) with orthonormal rows."""

    kind, pyreft_name = "loreft", "LoreftIntervention"

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        r = self.R
        x = h.to(r.dtype)
        return ((self._source(x) - x @ r.T) @ r).to(h.dtype)


class NoReFT(Intervention):
    """NoReFT: LoReFT without orthogonality, ``h + (act(W h + b) − P h) P`` with ``P`` = ``proj_layer.weight``."""

    kind, pyreft_name = "noreft", "NoreftIntervention"

    def __init__(self, embed_dim: int, rank: int, act: str = "linear", proj_bias: bool = True) -> None:
        super().__init__(embed_dim, rank, act)
        self.proj_layer = nn.Linear(embed_dim, rank, bias=proj_bias)
        self.learned_source = nn.Linear(embed_dim, rank)

    def delta(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        p = self.proj_layer.weight
        x = h.to(p.dtype)
        return ((self._source(x) - x @ p.T) @ p).to(h.dtype)


INTERVENTION_KINDS: dict[str, type[Intervention]] = {
    cls.kind: cls for cls in (NodiReFT, DiReFT, LoReFT, NoReFT)
} | {cls.pyreft_name: cls for cls in (NodiReFT, DiReFT, LoReFT, NoReFT)}


def make_intervention(kind: str, embed_dim: int, rank: int, act: str = "linear") -> Intervention:
    """A freshly initialized intervention of ``kind`` (seed torch before calling for reproducibility).

    ``proj_layer`` starts near zero so a new adapter starts close to the identity edit.
    """
    check_choice("kind", kind, tuple(INTERVENTION_KINDS))
    iv = INTERVENTION_KINDS[kind](embed_dim, rank, act)
    if hasattr(iv, "proj_layer"):
        with torch.no_grad():
            iv.proj_layer.weight.mul_(0.1)
    return iv


@dataclass
class Adapter:
    """One intervention per layer plus where they act.

    Attributes:
        interventions: layer → intervention (all of one ``d_model``).
        positions: a :data:`~commandv_interp.types.PositionRule` (``last`` = last prompt token, the paper's).
        first_last_k: ``k`` for ``first_last``.
        metadata: free-form provenance (model, behavior, training record ...), saved as JSON.
    """

    interventions: dict[int, Intervention]
    positions: str = "last"
    first_last_k: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interventions:
            raise ValueError("an Adapter needs at least one intervention")
        check_choice("positions", self.positions, POSITION_RULES)
        dims = {iv.d_model for iv in self.interventions.values()}
        if len(dims) != 1:
            raise ValueError(f"interventions of one adapter must share d_model, got {sorted(dims)!r}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.interventions)

    @property
    def d_model(self) -> int:
        return next(iter(self.interventions.values())).d_model

    @property
    def kind(self) -> str:
        kinds = {iv.kind for iv in self.interventions.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def rank(self) -> int:
        return max(iv.rank for iv in self.interventions.values())

    def delta(self, layer: int, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.interventions[layer].delta(h)

    def __len__(self) -> int:
        return len(self.interventions)
