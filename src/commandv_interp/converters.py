"""Stage 4 (converters): consumes two profiles and a :class:`LayerMap`, produces :class:`Converters`.

For each mapped pair a :class:`LayerConverter` with ``to_donor(h_R)`` and ``to_recipient(h_D)``, each a
:class:`LinearConverter` ``y = x @ Wᵀ + b``. ``W`` may be stored factored (``W = left @ right``, rank ≤
n_prompts) so that wide models do not need full ``d_R × d_D`` matrices. Deltas are mapped by the linear
part only (a difference of states has no offset).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from commandv_interp.correspondence import LayerMap, _check_pairing
from commandv_interp.fitting import FitResult, fit_linear, holdout_split, scores
from commandv_interp.io import atomic_write
from commandv_interp.profiles import ActivationProfile
from commandv_interp.types import Float, Tensor, check_choice

__all__ = ["LinearConverter", "LayerConverter", "Converters", "fit_converters", "ConverterMethod", "CONVERTER_METHODS"]

ConverterMethod = Literal["pinv", "ridge", "affine", "procrustes"]
CONVERTER_METHODS: tuple[str, ...] = get_args(ConverterMethod)
KIND = "commandv.converters"


@dataclass(frozen=True)
class LinearConverter:
    """``y = x @ Wᵀ + b`` with ``W = left @ right`` (``right`` is None for a dense ``W = left``)."""

    left: Float[Tensor, "d_out k"]
    right: Float[Tensor, "k d_in"] | None = None
    bias: Float[Tensor, " d_out"] | None = None

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
        """One safetensors file: tensors ``<pair>.<direction>.<part>`` + JSON metadata; atomic."""
        tensors, pairs_meta = {}, []
        for i, p in enumerate(self.pairs):
            for direction, conv in (("to_donor", p.to_donor), ("to_recipient", p.to_recipient)):
                for part in ("left", "right", "bias"):
                    t = getattr(conv, part)
                    if t is not None:
                        tensors[f"{i}.{direction}.{part}"] = t.contiguous()
            pairs_meta.append({"donor_layer": p.donor_layer, "recipient_layer": p.recipient_layer,
                               "fit_scores": p.fit_scores})
        meta = {"kind": KIND, "method": self.method, "donor_model": self.donor_model,
                "recipient_model": self.recipient_model, "donor_config_hash": self.donor_config_hash,
                "recipient_config_hash": self.recipient_config_hash, "d_donor": self.d_donor,
                "d_recipient": self.d_recipient, "prompts_fingerprint": self.prompts_fingerprint,
                "pairs": pairs_meta, "extra": self.extra}
        return atomic_write(path, lambda f: save_file(tensors, str(f), metadata={"commandv": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> "Converters":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"converters file {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("commandv", "{}"))
            if meta.get("kind") != KIND:
                raise ValueError(f"{str(path)!r} is not a commandv converters file (kind={meta.get('kind')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        pairs = []
        for i, pm in enumerate(meta["pairs"]):
            convs = {d: LinearConverter(*(tensors.get(f"{i}.{d}.{part}") for part in ("left", "right", "bias")))
                     for d in ("to_donor", "to_recipient")}
            pairs.append(LayerConverter(pm["donor_layer"], pm["recipient_layer"], convs["to_donor"],
                                        convs["to_recipient"], pm["fit_scores"]))
        return cls(tuple(pairs), meta["method"], meta["donor_model"], meta["recipient_model"],
                   meta["donor_config_hash"], meta["recipient_config_hash"], meta["d_donor"], meta["d_recipient"],
                   meta["prompts_fingerprint"], meta.get("extra", {}))


def fit_converters(
    donor: ActivationProfile,
    recipient: ActivationProfile,
    layer_map: LayerMap,
    method: ConverterMethod = "pinv",
    holdout: float = 0.2,
    ridge_grid: tuple[float, ...] | None = None,
) -> Converters:
    """Fit recipient→donor and donor→recipient converters for every mapped layer pair.

    Args:
        donor, recipient: profiles over the same prompts (fingerprints must match).
        layer_map: which recipient layer each donor layer maps to.
        method: ``pinv`` (paper-exact ``pinv(A_R) A_D`` / ``pinv(A_D) A_R``, no centering), ``ridge``
            (regularized least squares, λ from held-out error), ``affine`` (centered, with bias, λ from
            held-out error), ``procrustes`` (orthogonal after zero-padding, centered, with scale and bias).
        holdout: fraction of prompts held out to score each fit (and pick λ); the final converters are
            refit on all prompts.
        ridge_grid: λ candidates as multiples of the mean eigenvalue of ``XᵀX`` (default: a log grid).

    Returns:
        :class:`Converters` whose ``fit_scores`` hold held-out R² and relative MSE per direction.
    """
    check_choice("method", method, CONVERTER_METHODS)
    _check_pairing(donor, recipient)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    train, test = holdout_split(donor.n_prompts, holdout)
    out = []
    for donor_layer, recipient_layer in layer_map.pairs:
        a_d, a_r = donor[donor_layer].double(), recipient[recipient_layer].double()
        fits, fit_scores = {}, {}
        for direction, x, y in (("to_donor", a_r, a_d), ("to_recipient", a_d, a_r)):
            trial = fit_linear(x[train], y[train], method, ridge_grid, select_on=(x[test], y[test]))
            fit_scores[direction] = scores(trial, x[test], y[test]) | {"ridge": trial.ridge}
            fits[direction] = fit_linear(x, y, method, fixed_ridge=trial.ridge)
        out.append(LayerConverter(donor_layer, recipient_layer, LinearConverter.from_fit(fits["to_donor"]),
                                  LinearConverter.from_fit(fits["to_recipient"]), fit_scores))
    return Converters(tuple(out), method, donor.model_name, recipient.model_name, donor.config_hash,
                      recipient.config_hash, donor.d_model, recipient.d_model, donor.prompts_fingerprint,
                      {"layer_map_method": layer_map.method, "n_prompts": donor.n_prompts})
