"""Consumes the models, adapter and prompts of a transfer, produces their :class:`Fingerprints`:
what a saved transfer was made from, checked again when it is loaded with a model, analyzed or replayed.

A model's fingerprint is its config hash and the digest of its weights of
:func:`~commandv_interp.access.fingerprint.weights_digest` (signs of sampled embedding and first-block weights: the
same on both backends and in any float dtype; shuffled or re-trained weights differ).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.access.fingerprint import weights_digest
from commandv_interp.adapters import Adapter
from commandv_interp.prompts import prompts_fingerprint

__all__ = ["Fingerprints", "ModelFingerprint"]


@dataclass(frozen=True)
class ModelFingerprint:
    """A model's name (informative only), architecture config hash and weights digest."""

    name: str
    config_hash: str
    weights: str | None  # None: the weights were not in memory (offloaded) when it was taken; not compared

    @property
    def identity(self) -> tuple[str, str | None]:
        """What makes two models the same: the config hash and the weights digest (not the name)."""
        return self.config_hash, self.weights

    @classmethod
    def of(cls, model: ModelAccess) -> ModelFingerprint:
        access = open_model(model)
        return cls(str(access.name), access.config_hash, weights_digest(access))

    def check(self, model: ModelAccess, role: str, where: str) -> None:
        """Refuse ``model`` unless it has this config hash and these weights, naming ``role`` and ``where``."""
        got = ModelFingerprint.of(model)
        if got.config_hash != self.config_hash:
            raise ValueError(f"{where} was made with {role} {self.name!r} (config hash {self.config_hash!r}), but the "
                             f"{role} given, {got.name!r}, has config hash {got.config_hash!r}; pass the {role} it "
                             "was made with")
        if None not in (got.weights, self.weights) and got.weights != self.weights:
            raise ValueError(f"{where} was made with {role} {self.name!r} whose weights digest is {self.weights!r}, "
                             f"but the {role} given, {got.name!r}, has weights digest {got.weights!r} (another "
                             f"checkpoint, fine-tune or dtype); pass the {role} it was made with")


@dataclass(frozen=True)
class Fingerprints:
    """What a transfer was made from: its prompts (the distinct ones, in order), both models and the donor's whole
    adapter."""

    prompts: str
    n_prompts: int
    donor_model: ModelFingerprint
    recipient_model: ModelFingerprint
    donor_adapter: str

    @classmethod
    def of(cls, donor_model: ModelAccess, recipient_model: ModelAccess, donor_adapter: Adapter,
           prompts: Sequence[str]) -> Fingerprints:
        return cls(prompts_fingerprint(prompts), len(prompts), ModelFingerprint.of(donor_model),
                   ModelFingerprint.of(recipient_model), donor_adapter.digest())

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "n_prompts": self.n_prompts, "donor_adapter": self.donor_adapter,
                "donor_model": vars(self.donor_model).copy(), "recipient_model": vars(self.recipient_model).copy()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Fingerprints:
        try:
            return cls(str(data["prompts"]), int(data["n_prompts"]), ModelFingerprint(**data["donor_model"]),
                       ModelFingerprint(**data["recipient_model"]), str(data["donor_adapter"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"transfer fingerprints are incomplete or malformed ({err}); re-create the transfer "
                             "with commandv transfer") from None

    def differences(self, other: Fingerprints) -> list[str]:
        """The inputs whose fingerprints differ from ``other``'s (model names are not compared)."""
        pairs = (("prompts", (self.prompts, self.n_prompts), (other.prompts, other.n_prompts)),
                 ("donor model", self.donor_model.identity, other.donor_model.identity),
                 ("recipient model", self.recipient_model.identity, other.recipient_model.identity),
                 ("donor adapter", self.donor_adapter, other.donor_adapter))
        return [what for what, mine, theirs in pairs if mine != theirs]
