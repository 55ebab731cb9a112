"""Consumes per-layer ReFT interventions (:mod:`~commandv_interp.adapters.interventions`), produces the
:class:`Adapter` that groups them: where they act (layers, positions), its provenance, digest and checks against a
model."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from commandv_interp.adapters.interventions import Intervention
from commandv_interp.types import POSITION_RULES, Float, Tensor, check_choice

__all__ = ["Adapter"]


@dataclass(frozen=True)
class Adapter:
    """One intervention per layer plus where they act: at layer ``l``, ``h ↦ h + interventions[l].delta(h)``.

    Attributes:
        interventions: layer (0-based block index) → intervention, all of one ``d_model``.
        positions: a :data:`~commandv_interp.types.PositionRule` (``last`` = last prompt token, the paper's).
        first_last_k: ``k`` for ``first_last`` (``None`` otherwise).
        metadata: free-form JSON-able provenance (model, d_model, behavior, training record ...).

    The dicts are copied on construction; the modules are shared (use :meth:`to` for an independent copy).
    """

    interventions: dict[int, Intervention]
    positions: str = "last"
    first_last_k: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interventions:
            raise ValueError("an Adapter needs at least one intervention, got an empty dict")
        for layer, iv in self.interventions.items():
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise ValueError(f"layers must be ints >= 0 (0-based block index), got {layer!r}")
            if not isinstance(iv, Intervention):
                raise ValueError(f"layer {layer}: expected an Intervention, got {type(iv).__name__}")
        check_choice("positions", self.positions, POSITION_RULES)
        if self.positions == "first_last" and (self.first_last_k is None or self.first_last_k < 1):
            raise ValueError(f"positions='first_last' needs first_last_k >= 1, got {self.first_last_k!r}")
        dims = {iv.d_model for iv in self.interventions.values()}
        if len(dims) != 1:
            raise ValueError(f"interventions of one adapter must share d_model, got {sorted(dims)!r}")
        for layer, iv in self.interventions.items():
            for key, value in iv.state_dict().items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"adapter weight {key!r} at layer {layer} has NaN/inf values; retrain or "
                                     "recompile it from finite inputs (a finite alpha)")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"adapter metadata must be a dict, got {type(self.metadata).__name__}")
        object.__setattr__(self, "interventions", dict(self.interventions))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def layers(self) -> list[int]:
        return sorted(self.interventions)

    @property
    def d_model(self) -> int:
        return next(iter(self.interventions.values())).d_model

    @property
    def kind(self) -> str:
        """The common kind, or ``mixed``."""
        kinds = {iv.kind for iv in self.interventions.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def rank(self) -> int:
        """The largest rank over layers."""
        return max(iv.rank for iv in self.interventions.values())

    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the layers, kinds, activations and parameter values: two adapters with equal
        digests make the same edit (converters fitted for one adapter record it)."""
        h = hashlib.sha256()
        for layer, iv in sorted(self.interventions.items()):
            h.update(f"{layer}:{iv.kind}:{iv.act_name}".encode())
            for key, value in sorted(iv.state_dict().items()):
                h.update(key.encode())
                h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_positions(self, positions: str) -> None:
        """Refuse applying (or pasting, compiling) at ``positions`` that miss the positions the adapter was trained
        at: a ``first_last`` adapter needs ``first_last`` or ``all``; a ``last`` one any rule but ``first_last``.

        >>> from commandv_interp.adapters.interventions import NodiReFT
        >>> Adapter({0: NodiReFT(4, 1)}, "first_last", 2).check_positions("last")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the adapter was trained at positions 'first_last' (k=2) but is used at 'last', which misses ...
        """
        check_choice("positions", positions, POSITION_RULES)
        trained = self.positions.split("+")[0]
        used = positions.split("+")[0]
        if used == "all" or used == trained or (trained == "last" and used == "first_last"):
            return
        k = f" (k={self.first_last_k})" if self.first_last_k is not None else ""
        raise ValueError(f"the adapter was trained at positions {self.positions!r}{k} but is used at {positions!r}, "
                         f"which misses them; use positions {trained!r} (or 'all')")

    def check_model(self, model_name: str, n_layers: int, d_model: int, config_hash: str | None = None,
                    weights_digest: str | None = None) -> None:
        """Refuse a model this adapter cannot act on: another width, too few layers, another config hash or weights
        digest (:func:`~commandv_interp.access.fingerprint.weights_digest`; each when the adapter records one)."""
        if d_model != self.d_model:
            raise ValueError(f"the adapter has d_model={self.d_model} but {model_name!r} has d_model={d_model}; "
                             "use the adapter's own model, or paste it through converters")
        bad = [layer for layer in self.layers if layer >= n_layers]
        if bad:
            raise ValueError(f"the adapter acts at layers {bad} but {model_name!r} has {n_layers} layers; use the "
                             "adapter's own model")
        own = self.metadata.get("config_hash")
        if config_hash is not None and isinstance(own, str) and own != config_hash:
            raise ValueError(f"the adapter was trained on a model with config hash {own!r} but {model_name!r} has "
                             f"{config_hash!r}; use the adapter's own model")
        own = self.metadata.get("weights_digest")
        if weights_digest is not None and isinstance(own, str) and own != weights_digest:
            raise ValueError(f"the adapter was made for a model with weights digest {own!r} but {model_name!r} (same "
                             f"config) has other weights ({weights_digest!r}); use the adapter's own model")

    def delta(self, layer: int, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The edit at ``layer``; raises if the adapter has no intervention there."""
        if layer not in self.interventions:
            raise ValueError(f"adapter has no intervention at layer {layer!r}; its layers are {self.layers}")
        return self.interventions[layer].delta(h)

    def restricted(self, layers: Sequence[int]) -> Adapter:
        """The same adapter at ``layers`` only (modules shared, not copied): e.g. to paste a subset of its layers.

        >>> from commandv_interp.adapters.interventions import NodiReFT
        >>> Adapter({0: NodiReFT(4, 1), 2: NodiReFT(4, 1)}).restricted([2]).layers
        [2]
        """
        missing = [layer for layer in layers if layer not in self.interventions]
        if missing:
            raise ValueError(f"adapter has no intervention at layers {missing}; its layers are {self.layers}")
        return Adapter({layer: self.interventions[layer] for layer in layers}, self.positions, self.first_last_k,
                       copy.deepcopy(self.metadata))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Adapter:
        """A new Adapter with deep-copied interventions moved to ``device``/cast to ``dtype``; ``self`` is unchanged."""
        moved = {layer: copy.deepcopy(iv).to(device=device, dtype=dtype) for layer, iv in self.interventions.items()}
        return Adapter(moved, self.positions, self.first_last_k, copy.deepcopy(self.metadata))

    def __len__(self) -> int:
        return len(self.interventions)
