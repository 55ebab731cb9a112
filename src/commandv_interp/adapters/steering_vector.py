"""Consumes a steering vector (the steering-vectors package's ``SteeringVector``, repeng's ``ControlVector`` or a
safetensors file of ``layer → vector``), produces a :class:`SteeringVectorEdit` and the block-output edits that apply
it.

At each of its layers ``l`` the edit adds the same vector to the block output at every token, prompt and
generated, padding excluded::

    h_l ← h_l + scale · v_l

as steering-vectors' ``SteeringVector.apply(model, multiplier=scale)`` (``layer_type="decoder_block"``) and repeng's
``ControlModel.set_control(vector, coeff=scale)`` do. The objects are read by their attributes (neither package is
imported); the file with ``safetensors`` only (metadata ``scale`` and ``base_model`` optional).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from commandv_interp.access import ModelAccess
from commandv_interp.access.intrace import LowRankEdit
from commandv_interp.adapters.edits import delta_edit
from commandv_interp.io import atomic_write, check_input_file
from commandv_interp.types import Float, Tensor

__all__ = ["SteeringVectorEdit", "steering_from_object", "load_steering_file", "save_steering_file",
           "steering_edits", "STEERING_RULE"]

STEERING_RULE = "all+decode"
"""Every non-padding prompt token and every generated token: where both packages add their vectors."""


@dataclass(frozen=True)
class SteeringVectorEdit:
    """``h_l ← h_l + scale · v_l`` at every token of the layers in ``vectors`` (see the module doc).

    Attributes:
        vectors: layer (0-based block index) → ``d_model`` vector.
        scale: the multiplier (steering-vectors' ``multiplier``, repeng's ``coeff``).
        base_model: the model the vector was made on, if known (not enforced: widths and layers are).
    """

    vectors: dict[int, Tensor]
    scale: float = 1.0
    base_model: str | None = None

    kind = "steering"

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a steering vector needs at least one layer, got none")
        widths = set()
        for layer, v in self.vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"steering layers must be ints >= 0 (0-based block index), got {layer!r}")
            if not isinstance(v, torch.Tensor) or v.ndim != 1 or not bool(torch.isfinite(v).all()):
                raise ValueError(f"steering vector at layer {layer} must be a finite 1-D tensor")
            widths.add(int(v.shape[0]))
        if len(widths) != 1:
            raise ValueError(f"steering vectors of one edit must share d_model, got {sorted(widths)}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "vectors", {int(k): v.detach().float().clone() for k, v in self.vectors.items()})

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def restricted(self, layers: Sequence[int]) -> SteeringVectorEdit | None:
        """The vector at ``layers`` only (None when it has none of them)."""
        keep = {layer: v for layer, v in self.vectors.items() if layer in set(layers)}
        return SteeringVectorEdit(keep, self.scale, self.base_model) if keep else None

    def check_model(self, access: ModelAccess) -> None:
        if access.d_model != self.d_model:
            raise ValueError(f"the steering vector has d_model={self.d_model} but {access.name!r} has "
                             f"{access.d_model}; apply it to the model it was made on")
        bad = [layer for layer in self.layers if layer >= access.n_layers]
        if bad:
            raise ValueError(f"the steering vector acts at layers {bad} but {access.name!r} has {access.n_layers}")


def steering_edits(access: ModelAccess, edit: SteeringVectorEdit, alpha: float = 1.0) -> dict:
    """Layer → the block-output edit adding ``α · scale · v_l`` at every token (a remote trace runs its low-rank
    form ``act(h·0 + 1) v``)."""
    edit.check_model(access)
    out = {}
    for layer, v in edit.vectors.items():
        v = v.to(access.block_device(layer))
        scale = float(alpha) * edit.scale
        out[layer] = delta_edit([_constant(v)], STEERING_RULE, None, scale, lambda v=v, s=scale: (_low_rank(v, s),))
    return out


def _constant(v: Float[Tensor, " d_model"]):
    def delta(h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        return v.to(h.dtype).expand_as(h)

    return delta


def _low_rank(v: Tensor, scale: float) -> LowRankEdit:
    return LowRankEdit(torch.zeros(1, v.shape[0]), torch.ones(1), scale * v[None].float(), "linear", STEERING_RULE)


def steering_from_object(obj: object, scale: float = 1.0) -> SteeringVectorEdit:
    """A steering-vectors ``SteeringVector`` (``layer_activations``, ``layer_type``) or a repeng ``ControlVector``
    (``directions``) as a :class:`SteeringVectorEdit` applied at ``scale``.

    Raises:
        ValueError: neither kind, or a steering-vectors vector of another ``layer_type`` than ``decoder_block``.
    """
    if hasattr(obj, "layer_activations"):
        layer_type = getattr(obj, "layer_type", "decoder_block")
        if layer_type != "decoder_block":
            raise ValueError(f"steering vector of layer_type={layer_type!r}: only 'decoder_block' vectors (added to "
                             "the block outputs) are supported")
        vectors = {int(k): torch.as_tensor(v).detach().float().reshape(-1) for k, v in obj.layer_activations.items()}
    elif hasattr(obj, "directions"):
        vectors = {int(k): torch.as_tensor(v).float().reshape(-1) for k, v in obj.directions.items()}
    else:
        raise ValueError(f"cannot read a steering vector from a {type(obj).__name__}: pass steering-vectors' "
                         "SteeringVector, repeng's ControlVector or a safetensors file of layer → vector")
    negative = [k for k in vectors if k < 0]
    if negative:
        raise ValueError(f"steering layers {negative} are negative; index them from 0 (block index)")
    return SteeringVectorEdit(vectors, float(scale), getattr(obj, "model_type", None))


def load_steering_file(path: str | Path, scale: float | None = None) -> SteeringVectorEdit:
    """Read a safetensors file whose keys are layer indices (``"3"``) and values ``d_model`` vectors; ``scale``
    defaults to the file's ``scale`` metadata (else 1)."""
    path = check_input_file(path, "steering vector file")
    vectors: dict[int, Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        for key in handle.keys():
            if not key.isdigit():
                raise ValueError(f"{str(path)!r}: key {key!r} is not a layer index; name each vector by its 0-based "
                                 "block index ('0', '3', ...)")
            vectors[int(key)] = handle.get_tensor(key)
    if scale is None:
        try:
            scale = float(meta.get("scale", 1.0))
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: metadata scale={meta['scale']!r} is not a number") from err
    return SteeringVectorEdit(vectors, scale, meta.get("base_model"))


def save_steering_file(edit: SteeringVectorEdit, path: str | Path) -> Path:
    """Write ``edit`` in the format :func:`load_steering_file` reads (atomically)."""
    meta: Mapping[str, str] = {"scale": repr(float(edit.scale)), "kind": "commandv.steering_vector"}
    if edit.base_model:
        meta = dict(meta) | {"base_model": str(edit.base_model)}
    tensors = {str(layer): v.contiguous().cpu() for layer, v in edit.vectors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=dict(meta)))
