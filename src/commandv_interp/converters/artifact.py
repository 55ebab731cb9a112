"""The :class:`Converters` artifact: per mapped layer pair, a linear map each way.

For each mapped pair a :class:`LayerConverter` with ``to_donor(h_R)`` and ``to_recipient(h_D)``, each a
:class:`LinearConverter` ``y = x @ Wᵀ + b``. ``W`` may be stored factored (``W = left @ right``, rank ≤
n_prompts) so that wide models do not need full ``d_R × d_D`` matrices. Deltas are mapped by the linear
part only (a difference of states has no offset).
"""

from __future__ import annotations

import dataclasses

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from commandv_interp.access import ModelAccess
from commandv_interp.access.fingerprint import weights_digest
from commandv_interp.adapters import Adapter
from commandv_interp.converters.regression import FitResult
from commandv_interp.correspondence import LayerMap
from commandv_interp.io import DegenerateDataWarning, check_fields, check_finite, read_safetensors, write_safetensors
from commandv_interp.profiles import MIN_FIT_PROMPTS, ActivationProfile, check_profile_rank
from commandv_interp.types import Float, Tensor

__all__ = ["LinearConverter", "LayerConverter", "Converters", "ConverterMethod", "CONVERTER_METHODS",
           "check_fit_inputs", "provenance_extra"]

ConverterMethod = Literal["pinv", "ridge", "affine", "procrustes", "interface"]
"""``interface`` fits only an adapter's read and write directions (:mod:`~commandv_interp.converters.interface`)."""
CONVERTER_METHODS: tuple[str, ...] = get_args(ConverterMethod)
KIND = "commandv.converters"
STORAGE_DTYPE = torch.float32  # reproduces the float64 fit to ~1e-7 relative; the paste itself runs in float32
_SCHEMA = {"method": str, "donor_model": str, "recipient_model": str, "donor_config_hash": str,
           "recipient_config_hash": str, "d_donor": int, "d_recipient": int, "prompts_fingerprint": str,
           "pairs": list, "extra": dict}
_PARTS = ("left", "right", "bias")


@dataclass(frozen=True)
class LinearConverter:
    """``y = x @ Wᵀ + b`` with ``W = left @ right`` (``right`` is None for a dense ``W = left``)."""

    left: Float[Tensor, "d_out k"]
    right: Float[Tensor, "k d_in"] | None = None
    bias: Float[Tensor, " d_out"] | None = None

    def check(self, what: str, d_in: int, d_out: int) -> None:
        """Refuse parts that are not finite float matrices chaining ``d_in → d_out`` (``what`` names it)."""
        parts = {"left": self.left, "right": self.right, "bias": self.bias}
        for name, t in parts.items():
            if t is None:
                continue
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != (1 if name == "bias" else 2):
                raise ValueError(f"{what}: {name} must be a float {'vector' if name == 'bias' else 'matrix'}, got "
                                 f"{getattr(t, 'shape', type(t).__name__)!r}; re-fit the converters")
            check_finite(t, f"{what} ({name})", "re-fit the converters from finite profiles")
        inner = self.right.shape[0] if self.right is not None else None
        if inner is not None and self.left.shape[1] != inner:
            raise ValueError(f"{what}: factors of shapes {tuple(self.left.shape)} and {tuple(self.right.shape)} do "
                             "not chain; re-fit the converters")
        bias_ok = self.bias is None or self.bias.shape[0] == self.d_out
        if self.d_in != d_in or self.d_out != d_out or not bias_ok:
            raise ValueError(f"{what} maps width {self.d_in} to {self.d_out} (bias "
                             f"{None if self.bias is None else tuple(self.bias.shape)}) but the converters' metadata "
                             f"says {d_in} to {d_out}; re-fit the converters")

    def is_zero(self) -> bool:
        """True when the linear part is exactly zero (every mapped delta vanishes)."""
        return not bool(self.left.any()) or (self.right is not None and not bool(self.right.any()))

    @property
    def weight(self) -> Float[Tensor, "d_out d_in"]:
        return self.left if self.right is None else self.left @ self.right

    @property
    def d_in(self) -> int:
        return (self.left if self.right is None else self.right).shape[1]

    @property
    def d_out(self) -> int:
        return self.left.shape[0]

    def linear(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """``x @ Wᵀ`` (no bias): how a delta is mapped."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"converter expects inputs of width {self.d_in}, got {x.shape[-1]}")
        x = x.to(self.left.dtype)
        if self.right is not None:
            x = x @ self.right.T
        return x @ self.left.T

    def pullback(self, rows: Float[Tensor, "m d_out"]) -> Float[Tensor, "m d_in"]:
        """``rows @ W``: a linear read ``z = rows · y`` of the output as a read of the input, computed factored
        (``(rows @ left) @ right``) so that no ``d_out × d_in`` matrix is formed."""
        if rows.shape[-1] != self.d_out:
            raise ValueError(f"pullback expects rows of width {self.d_out}, got {rows.shape[-1]}")
        out = rows.to(self.left.dtype) @ self.left
        return out if self.right is None else out @ self.right

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        y = self.linear(x)
        return y if self.bias is None else y + self.bias

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LinearConverter":
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return LinearConverter(move(self.left), move(self.right), move(self.bias))

    @classmethod
    def from_fit(cls, fit: FitResult) -> "LinearConverter":
        return cls(fit.left, fit.right, fit.bias)


@dataclass(frozen=True)
class LayerConverter:
    """The two converters of one mapped layer pair, with held-out fit scores (both directions)."""

    donor_layer: int
    recipient_layer: int
    to_donor: LinearConverter
    to_recipient: LinearConverter
    fit_scores: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Converters:
    """All layer converters between one donor and one recipient, with provenance."""

    pairs: tuple[LayerConverter, ...]
    method: str
    donor_model: str
    recipient_model: str
    donor_config_hash: str
    recipient_config_hash: str
    d_donor: int
    d_recipient: int
    prompts_fingerprint: str
    extra: dict = field(default_factory=dict)
    adapter_digest: str | None = None  # set by adapter-aware fits: only that adapter may be pasted through them
    chain_alpha: float | None = None  # set by chained fits: the α the chain was fitted under

    def __post_init__(self) -> None:
        check_fields(vars(self), {k: v for k, v in _SCHEMA.items() if k != "pairs"} | {
            "adapter_digest": (str, type(None)), "chain_alpha": (float, type(None))}, "converters")
        if self.method not in CONVERTER_METHODS:
            raise ValueError(f"converters have method={self.method!r}; expected one of {list(CONVERTER_METHODS)}")
        if self.d_donor < 1 or self.d_recipient < 1:
            raise ValueError(f"converters have d_donor={self.d_donor}, d_recipient={self.d_recipient}; both must be "
                             ">= 1")
        if self.chain_alpha is not None and not math.isfinite(self.chain_alpha):
            raise ValueError(f"converters have chain_alpha={self.chain_alpha!r}; it must be finite")
        if not self.pairs:
            raise ValueError("converters need at least one layer pair; match at least one donor layer")
        seen: set[int] = set()
        depth = {side: self.extra.get(f"{side}_n_layers") for side in ("donor", "recipient")}
        for p in self.pairs:
            layers = (p.donor_layer, p.recipient_layer)
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers):
                raise ValueError(f"converter layers must be ints >= 0, got donor {p.donor_layer!r}, recipient "
                                 f"{p.recipient_layer!r}")
            for side, layer in (("donor", p.donor_layer), ("recipient", p.recipient_layer)):
                if isinstance(depth[side], int) and layer >= depth[side]:
                    raise ValueError(f"converters name {side} layer {layer} but their {side} has {depth[side]} layers "
                                     f"(0..{depth[side] - 1}); match layers within both models")
            if p.donor_layer in seen:
                raise ValueError(f"converters hold donor layer {p.donor_layer} twice; keep one pair per donor layer")
            seen.add(p.donor_layer)
            name = f"converter {p.donor_layer}->{p.recipient_layer}"
            p.to_recipient.check(f"{name} (to_recipient)", self.d_donor, self.d_recipient)
            p.to_donor.check(f"{name} (to_donor)", self.d_recipient, self.d_donor)
        zero = [(p.donor_layer, p.recipient_layer) for p in self.pairs if p.to_recipient.is_zero()]
        if zero:
            warnings.warn(f"{self.method!r} converters for pairs {zero} are all zero: pasting through them does "
                          "nothing (profiles constant or too few distinct prompts?); profile more distinct prompts "
                          "and re-fit", DegenerateDataWarning, stacklevel=3)

    def check_adapter(self, adapter: Adapter) -> None:
        """Refuse an adapter these converters cannot carry: another donor width, an unmapped donor layer, another
        donor model (config hash) or, for adapter-aware converters, another adapter (digest)."""
        if self.d_donor != adapter.d_model:
            raise ValueError(f"converters map a donor of width {self.d_donor} but the adapter has "
                             f"d_model={adapter.d_model}; derive converters from this adapter's donor")
        adapter_hash = adapter.metadata.get("config_hash")
        if adapter_hash is not None and adapter_hash != self.donor_config_hash:
            raise ValueError(f"the adapter was trained on a model with config hash {adapter_hash!r} but the "
                             f"converters' donor has {self.donor_config_hash!r}; profile the adapter's own donor")
        if self.adapter_digest is not None and self.adapter_digest != adapter.digest():
            raise ValueError(f"these {self.method!r} converters were fitted for the adapter with digest "
                             f"{self.adapter_digest!r}, not for this one ({adapter.digest()!r}); fit converters "
                             "for it with method='interface' and adapter=<it>")
        mapped = {p.donor_layer for p in self.pairs}
        unmapped = [layer for layer in adapter.layers if layer not in mapped]
        if unmapped:
            raise ValueError(f"the converters map donor layers {sorted(mapped)} but the adapter acts at "
                             f"{unmapped} too; match and fit the adapter's layers {adapter.layers}")

    def restricted(self, adapter: Adapter, layers: Sequence[int]) -> "Converters":
        """These converters for ``adapter.restricted(layers)`` (e.g. to paste a subset of its layers): the pairs of
        those donor layers, tied to the restricted adapter when these are tied to ``adapter``."""
        self.check_adapter(adapter)
        sub = adapter.restricted(layers)
        return dataclasses.replace(self, pairs=tuple(p for p in self.pairs if p.donor_layer in sub.interventions),
                                   adapter_digest=sub.digest() if self.adapter_digest is not None else None)

    def check_profiles(self, donor_profile: ActivationProfile, recipient_profile: ActivationProfile) -> None:
        """Refuse profiles of other models than these converters' (config hashes), or taken on different prompts."""
        donor_profile.check_paired_with(recipient_profile)
        for side, prof, hash_ in (("donor", donor_profile, self.donor_config_hash),
                                  ("recipient", recipient_profile, self.recipient_config_hash)):
            if prof.config_hash != hash_:
                raise ValueError(f"the {side} profile is of {prof.model_name!r} (config hash {prof.config_hash!r}) but "
                                 f"the converters' {side} has config hash {hash_!r}; pass profiles of the converters' "
                                 "models")
            recorded = self.extra.get(f"{side}_weights_digest")
            if isinstance(recorded, str) and prof.weights_digest is not None and prof.weights_digest != recorded:
                raise ValueError(f"the {side} profile is of {prof.model_name!r} with weights digest "
                                 f"{prof.weights_digest!r} but the converters' {side} has {recorded!r} (same config, "
                                 "other weights); pass profiles of the converters' models")

    def check_recipient(self, recipient: ModelAccess) -> None:
        """Refuse a recipient these converters were not fitted for (width, config hash, layer range)."""
        if self.d_recipient != recipient.d_model:
            raise ValueError(f"converters map a recipient of width {self.d_recipient} but {recipient.name!r} has "
                             f"d_model={recipient.d_model}; derive converters for this recipient")
        if self.recipient_config_hash != recipient.config_hash:
            raise ValueError(f"converters were fitted for recipient {self.recipient_model!r} (config hash "
                             f"{self.recipient_config_hash!r}) but {recipient.name!r} has config hash "
                             f"{recipient.config_hash!r}; derive converters from this recipient's profile")
        bad = sorted({p.recipient_layer for p in self.pairs if not 0 <= p.recipient_layer < recipient.n_layers})
        if bad:
            raise ValueError(f"converters name recipient layers {bad} but {recipient.name!r} has "
                             f"{recipient.n_layers} layers; derive converters for this recipient")
        recorded, actual = self.extra.get("recipient_weights_digest"), weights_digest(recipient)
        if isinstance(recorded, str) and actual is not None and recorded != actual:
            raise ValueError(f"converters were fitted for recipient {self.recipient_model!r} with weights digest "
                             f"{recorded!r} but {recipient.name!r} (same config) has other weights ({actual!r}); "
                             "derive converters from this recipient's profile")

    def __iter__(self) -> Iterator[LayerConverter]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def for_donor_layer(self, donor_layer: int) -> LayerConverter:
        for pair in self.pairs:
            if pair.donor_layer == donor_layer:
                return pair
        raise KeyError(f"no converter for donor layer {donor_layer}; mapped donor layers: "
                       f"{[p.donor_layer for p in self.pairs]} (derive converters for the adapter's layers)")

    def layer_map(self) -> dict[int, int]:
        return {p.donor_layer: p.recipient_layer for p in self.pairs}

    def scores_frame(self):
        """Held-out fit scores as a tidy DataFrame (one row per pair × direction × metric)."""
        import pandas as pd

        rows = [{"donor_layer": p.donor_layer, "recipient_layer": p.recipient_layer, "direction": direction,
                 "metric": metric, "value": value}
                for p in self.pairs for direction, d in p.fit_scores.items() if isinstance(d, dict)
                for metric, value in d.items()]
        return pd.DataFrame(rows)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors ``<pair>.<direction>.<part>`` in float32 (``STORAGE_DTYPE``; the factored
        form is kept) + JSON metadata (with checksum); atomic."""
        tensors, pairs_meta = {}, []
        for i, p in enumerate(self.pairs):
            for direction, conv in (("to_donor", p.to_donor), ("to_recipient", p.to_recipient)):
                for part in _PARTS:
                    t = getattr(conv, part)
                    if t is not None:  # fitted in float64, stored in float32 (the paste computes in float32)
                        tensors[f"{i}.{direction}.{part}"] = t.to(STORAGE_DTYPE)
            pairs_meta.append({"donor_layer": p.donor_layer, "recipient_layer": p.recipient_layer,
                               "fit_scores": _finite_scores(p.fit_scores)})
        meta = {"kind": KIND, "method": self.method, "donor_model": self.donor_model,
                "recipient_model": self.recipient_model, "donor_config_hash": self.donor_config_hash,
                "recipient_config_hash": self.recipient_config_hash, "d_donor": self.d_donor,
                "d_recipient": self.d_recipient, "prompts_fingerprint": self.prompts_fingerprint,
                "pairs": pairs_meta, "extra": self.extra, "adapter_digest": self.adapter_digest,
                "chain_alpha": self.chain_alpha}
        return write_safetensors(path, tensors, meta, "converters")

    @classmethod
    def load(cls, path: str | Path) -> "Converters":
        """Read converters written by :meth:`save`; refuse another kind, malformed metadata, tensors that do not
        match it (names, shapes, finite values) or its checksum."""
        meta, tensors = read_safetensors(path, "converters file", KIND)
        where = f"converters file {str(path)!r}"
        check_fields(meta, _SCHEMA, where)
        extra = dict(meta["extra"])
        pairs = []
        for i, pm in enumerate(meta["pairs"]):
            if not isinstance(pm, dict):
                raise ValueError(f"{where}: pair {i} is {pm!r}, not an object; re-create the file")
            check_fields(pm, {"donor_layer": int, "recipient_layer": int, "fit_scores": dict}, f"{where} pair {i}")
            convs = {}
            for d in ("to_donor", "to_recipient"):
                if f"{i}.{d}.left" not in tensors:
                    raise ValueError(f"{where}: pair {i} lacks tensor {f'{i}.{d}.left'!r}; re-create the file")
                convs[d] = LinearConverter(*(tensors.pop(f"{i}.{d}.{part}", None) for part in _PARTS))
            pairs.append(LayerConverter(pm["donor_layer"], pm["recipient_layer"], convs["to_donor"],
                                        convs["to_recipient"], pm["fit_scores"]))
        if tensors:
            raise ValueError(f"{where}: tensors {sorted(tensors)} belong to no pair of its metadata; re-create "
                             "the file")
        digest = meta.get("adapter_digest", extra.pop("adapter_digest", None))
        alpha = meta.get("chain_alpha", extra.pop("chain_alpha", None))
        try:
            return cls(tuple(pairs), meta["method"], meta["donor_model"], meta["recipient_model"],
                       meta["donor_config_hash"], meta["recipient_config_hash"], meta["d_donor"], meta["d_recipient"],
                       meta["prompts_fingerprint"], extra, digest, alpha)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def provenance_extra(donor_profile: ActivationProfile, recipient_profile: ActivationProfile) -> dict:
    """Both profiled models' depth and weights digest, for a fit's ``extra`` (checked when the converters are built,
    by :meth:`Converters.check_recipient` and by :meth:`Converters.check_profiles`)."""
    sides = (("donor", donor_profile), ("recipient", recipient_profile))
    return {f"{side}_n_layers": prof.n_layers for side, prof in sides} | {
        f"{side}_weights_digest": prof.weights_digest for side, prof in sides if prof.weights_digest is not None}


def _finite_scores(scores: dict) -> dict:
    """Fit scores with NaN/inf written as ``None`` (JSON has no such numbers)."""
    return {k: _finite_scores(v) if isinstance(v, dict) else
            (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scores.items()}


def check_fit_inputs(donor_profile: ActivationProfile, recipient_profile: ActivationProfile, layer_map: LayerMap,
                     method: str, adapter: Adapter | None = None, ridge_grid: tuple[float, ...] | None = None) -> None:
    """Refuse what a converter fit cannot use: a ``ridge_grid`` with negative or non-finite λ, too few prompts (at
    least 3, and more than the adapter's rank for ``interface``), a layer map of another model pair or naming
    layers the models lack; warn about constant profiles."""
    if ridge_grid is not None:
        grid = tuple(ridge_grid)
        if not grid or not all(isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0 for lam in grid):
            raise ValueError(f"ridge_grid must be a non-empty tuple of finite λ >= 0, got {ridge_grid!r}")
    needed = MIN_FIT_PROMPTS
    if method == "interface" and adapter is not None:
        needed = max(needed, adapter.rank + 2)
    why = f"more than the adapter's rank {adapter.rank}" if needed > MIN_FIT_PROMPTS else "a held-out split"
    if donor_profile.n_prompts < needed:
        raise ValueError(f"the profiles hold {donor_profile.n_prompts} prompts but a {method!r} fit needs at least "
                         f"{needed} ({why}); profile more prompts")
    donor_profile.check_paired_with(recipient_profile)
    layer_map.check_profiles(donor_profile, recipient_profile)
    for prof in (donor_profile, recipient_profile):
        check_profile_rank(prof, needed)
