"""Consumes a :class:`ModelAccess` and prompts, produces an :class:`ActivationProfile`.

A profile holds, per layer, the ``n_prompts × d_model`` matrix of block outputs at each prompt's last
token (the paper's "activation profile"), plus metadata that lets later stages refuse mismatched
pairings. Saved as one safetensors file, written atomically.

Prompts that continue one another (a prompt and the same prompt followed by a word, as the label-free transfer
profiles them) can share their passes: ``profile(..., share_prefixes=True)`` runs each shortest prompt's tokens
once and every continuation's extra tokens from its cached states (:mod:`~commandv_interp.access.prefix`), where the
backend keeps them; :func:`profile_tokens` counts what either way runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from commandv_interp.access import Batch, ModelAccess, open_model
from commandv_interp.access.chat import ChatTemplate, format_prompts
from commandv_interp.access.limits import check_fits_context
from commandv_interp.access.prefix import continuation_roots, shared_prefix_tokens
from commandv_interp.access.fingerprint import weights_digest
from commandv_interp.io import DegenerateDataWarning, check_fields, read_safetensors, write_safetensors
from commandv_interp.prompts import prompts_fingerprint
from commandv_interp.types import POSITION_RULES, Float, Tensor
from commandv_interp.validation import check_layers
from commandv_interp.version import __version__

__all__ = ["ActivationProfile", "profile", "profile_tokens", "shares_prefixes", "ChatTemplate",
           "check_profile_rank"]

KIND = "commandv.activation_profile"
MIN_FIT_PROMPTS = 3  # a held-out split needs 1 test row and 2 train rows
_SCHEMA = {"model_name": str, "config_hash": str, "n_layers": int, "d_model": int, "dtype": str,
           "prompts_fingerprint": str, "position_rule": str, "library_version": str, "extra": dict}


@dataclass(frozen=True)
class ActivationProfile:
    """Last-prompt-token block outputs of one model over one prompt set.

    Attributes:
        activations: layer → ``n_prompts × d_model`` float32 matrix (row i = prompt i).
        model_name, config_hash, n_layers, d_model, dtype: which model produced it.
        prompts_fingerprint: hash of the exact (formatted) prompt list; pairs must match.
        position_rule: where the vectors were read (``"last"`` prompt token).
        library_version: commandv_interp version that wrote it.
    """

    activations: dict[int, Float[Tensor, "n_prompts d_model"]]
    model_name: str
    config_hash: str
    n_layers: int
    d_model: int
    dtype: str
    prompts_fingerprint: str
    position_rule: str = "last"
    library_version: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(vars(self), _SCHEMA, f"profile of {self.model_name!r}")
        if isinstance(self.activations, dict):  # bf16/fp16 states are kept in float32 (``dtype`` names the model's)
            object.__setattr__(self, "activations", {layer: _at_least_float32(a)
                                                     for layer, a in self.activations.items()})
        if self.n_layers < 1 or self.d_model < 1:
            raise ValueError(f"profile of {self.model_name!r} has n_layers={self.n_layers}, d_model={self.d_model}; "
                             "both must be >= 1")
        if self.position_rule not in POSITION_RULES:
            raise ValueError(f"profile of {self.model_name!r} has position_rule={self.position_rule!r}; expected one "
                             f"of {list(POSITION_RULES)}")
        if not self.activations:
            raise ValueError(f"profile of {self.model_name!r} has no layers; profile at least one layer")
        bad = [layer for layer in self.activations
               if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers]
        if bad:
            raise ValueError(f"profile of {self.model_name!r} has layers {bad!r} outside 0..{self.n_layers - 1} "
                             f"(n_layers={self.n_layers}); re-profile the model")
        shapes = {tuple(a.shape) for a in self.activations.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"all layers of a profile must be matrices of one shape (n_prompts x d_model), got "
                             f"{sorted(shapes)!r}")
        (n, d), = shapes
        if d != self.d_model:
            raise ValueError(f"profile matrices have width {d} but the metadata says d_model={self.d_model}; "
                             "re-profile the model")
        if n < 1:
            raise ValueError(f"profile of {self.model_name!r} has 0 prompts; profile at least 3")
        for layer, act in self.activations.items():
            if not act.is_floating_point() or not torch.isfinite(act).all():
                raise ValueError(f"profile of {self.model_name!r} has NaN/inf (or non-float) values at layer {layer}; "
                                 "check the model's dtype (use float32) and the prompts")

    @property
    def layers(self) -> list[int]:
        return sorted(self.activations)

    @property
    def n_prompts(self) -> int:
        return next(iter(self.activations.values())).shape[0]

    def __getitem__(self, layer: int) -> Float[Tensor, "n_prompts d_model"]:
        if layer not in self.activations:
            raise KeyError(f"layer {layer} not in profile of {self.model_name!r} (layers {self.layers})")
        return self.activations[layer]

    def check_paired_with(self, other: "ActivationProfile") -> None:
        """Refuse a pairing of two profiles taken on different prompts (rows must correspond one to one)."""
        if self.prompts_fingerprint != other.prompts_fingerprint or self.n_prompts != other.n_prompts:
            raise ValueError(
                f"profiles of {self.model_name!r} and {other.model_name!r} were taken on different prompts "
                f"({self.n_prompts} prompts, fingerprint {self.prompts_fingerprint[:12]!r} vs {other.n_prompts}, "
                f"{other.prompts_fingerprint[:12]!r}); profile both models on the same prompts")

    def check_taken_on(self, texts: Sequence[str]) -> None:
        """Refuse ``texts`` that are not the exact texts this profile was taken on (fingerprints named)."""
        fingerprint = prompts_fingerprint(list(texts))
        if self.prompts_fingerprint != fingerprint:
            raise ValueError(f"the profile of {self.model_name!r} was taken on other prompts (fingerprint "
                             f"{self.prompts_fingerprint[:12]!r}, these prompts give {fingerprint[:12]!r}); pass the "
                             "exact texts it was profiled on (after any chat template)")

    @property
    def weights_digest(self) -> str | None:
        """:func:`~commandv_interp.access.fingerprint.weights_digest` of the profiled model (None: not recorded)."""
        value = self.extra.get("weights_digest")
        return value if isinstance(value, str) else None

    def metadata(self) -> dict:
        return {
            "kind": KIND, "model_name": self.model_name, "config_hash": self.config_hash,
            "n_layers": self.n_layers, "d_model": self.d_model, "dtype": self.dtype,
            "prompts_fingerprint": self.prompts_fingerprint, "n_prompts": self.n_prompts,
            "position_rule": self.position_rule, "library_version": self.library_version,
            "extra": self.extra,
        }

    def subset(self, rows: Sequence[int] | Tensor, fingerprint: str | None = None) -> "ActivationProfile":
        """A profile over a subset (or permutation) of the prompts; the fingerprint changes with it."""
        idx = torch.as_tensor(list(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long)
        fp = fingerprint or prompts_fingerprint([self.prompts_fingerprint] + [str(i) for i in idx.tolist()])
        acts = {layer: a[idx] for layer, a in self.activations.items()}
        return ActivationProfile(acts, self.model_name, self.config_hash, self.n_layers, self.d_model,
                                 self.dtype, fp, self.position_rule, self.library_version, dict(self.extra))

    @classmethod
    def from_states(cls, access: ModelAccess, texts: Sequence[str],
                    activations: dict[int, Float[Tensor, "n_prompts d_model"]]) -> "ActivationProfile":
        """A profile of ``access`` from last-prompt-token states recorded some other way (row i = ``texts[i]``, the
        exact texts fed to the model), e.g. by :func:`~commandv_interp.access.recorded_states`."""
        n_rows = {layer: a.shape[0] for layer, a in activations.items() if a.shape[0] != len(texts)}
        if n_rows:
            raise ValueError(f"states have {n_rows} rows per layer but there are {len(texts)} texts; pass the texts "
                             "the states were recorded on")
        return cls(activations={layer: a.float() for layer, a in activations.items()}, model_name=access.name,
                   config_hash=access.config_hash, n_layers=access.n_layers, d_model=access.d_model,
                   dtype=str(access.dtype).removeprefix("torch."), prompts_fingerprint=prompts_fingerprint(list(texts)),
                   position_rule="last", library_version=__version__,
                   extra={"backend": access.backend, "hook_points": {str(layer): access.hook_point(layer)
                                                                     for layer in sorted(activations)},
                          "weights_digest": weights_digest(access)})

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors ``layer.<l>`` + JSON metadata with a checksum), atomically."""
        tensors = {f"layer.{layer}": a for layer, a in self.activations.items()}
        return write_safetensors(path, tensors, self.metadata(), "activation profile")

    @classmethod
    def load(cls, path: str | Path) -> "ActivationProfile":
        """Read a profile written by :meth:`save`; refuse files of another kind, malformed metadata, tensors that do
        not match the metadata or the checksum."""
        meta, tensors = read_safetensors(path, "activation profile", KIND)
        where = f"activation profile {str(path)!r}"
        check_fields(meta, _SCHEMA | {"n_prompts": int}, where)
        acts = {}
        for key, value in tensors.items():
            name, _, index = key.partition(".")
            if name != "layer" or not index.isdigit():
                raise ValueError(f"{where}: unexpected tensor {key!r} (expected 'layer.<l>'); re-create the file")
            acts[int(index)] = value
        if acts and next(iter(acts.values())).ndim == 2 and next(iter(acts.values())).shape[0] != meta["n_prompts"]:
            raise ValueError(f"{where}: tensors have {next(iter(acts.values())).shape[0]} rows but the metadata says "
                             f"n_prompts={meta['n_prompts']}; re-create the file")
        try:
            return cls(acts, meta["model_name"], meta["config_hash"], meta["n_layers"], meta["d_model"], meta["dtype"],
                       meta["prompts_fingerprint"], meta["position_rule"], meta["library_version"], meta["extra"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _at_least_float32(t: object) -> object:
    """A bf16/fp16 tensor as float32; anything else (float32, float64, non-tensors left to the checks) as is."""
    half = isinstance(t, Tensor) and t.is_floating_point() and t.element_size() < 4
    return t.float() if half else t


def check_profile_rank(prof: ActivationProfile, needed: int = MIN_FIT_PROMPTS, refuse_constant: bool = False) -> None:
    """Refuse a profile with fewer than ``needed`` prompts; warn (:class:`DegenerateDataWarning`) about layers whose
    rows are all equal (e.g. identical prompts; refused with ``refuse_constant``)."""
    if prof.n_prompts < needed:
        raise ValueError(f"the profile of {prof.model_name!r} has {prof.n_prompts} prompts but at least {needed} are "
                         f"needed; profile more prompts")
    for layer in prof.layers if prof.n_prompts > 1 else ():  # one row is trivially "constant"
        act = prof[layer].double()
        centered = act - act.mean(dim=0)
        scale = float(act.abs().max()) or 1.0
        if float(centered.abs().max()) <= 1e-5 * scale:
            message = (f"the profile of {prof.model_name!r} is constant across its {prof.n_prompts} prompts at layer "
                       f"{layer} (identical prompts?); similarity maps and converters fitted on it are meaningless: "
                       "profile distinct prompts")
            if refuse_constant:
                raise ValueError(message)
            warnings.warn(message, DegenerateDataWarning, stacklevel=3)
            return


def _warn_duplicates(prof: ActivationProfile) -> None:
    n_distinct = int(torch.unique(prof[prof.layers[-1]], dim=0).shape[0])
    if n_distinct < prof.n_prompts:
        warnings.warn(f"the profile of {prof.model_name!r} has {prof.n_prompts - n_distinct} duplicate rows (repeated "
                      "prompts); they add no information: profile distinct prompts", DegenerateDataWarning,
                      stacklevel=3)


def shares_prefixes(access: ModelAccess, remote: bool | str = False) -> bool:
    """Whether ``profile(..., share_prefixes=True)`` shares passes on ``access``: its backend keeps prefix states,
    no edit is active (the states are taken without edits) and the profile runs here (not ``remote``)."""
    return bool(access.supports_prefix and not access.active_edits and not remote)


def profile_tokens(model: ModelAccess | object, prompts: Sequence[str], share_prefixes: bool = False,
                   chat_template: ChatTemplate = None) -> int:
    """The tokens :func:`profile` runs over ``prompts`` with the same ``share_prefixes`` and ``chat_template``
    (times ``2 · params`` through the deepest layer read, its FLOPs: :func:`~commandv_interp.access.token_flops`)."""
    access = open_model(model)
    ids = access.tokenizer(format_prompts(access.tokenizer, list(prompts), chat_template))["input_ids"]
    if share_prefixes and shares_prefixes(access):
        return shared_prefix_tokens(ids)
    return sum(len(row) for row in ids)


def _read_sharing_prefixes(access: ModelAccess, texts: Sequence[str], layers: list[int], batch_size: int,
                           progress: bool) -> dict[int, Tensor]:
    """Each text's last-token block outputs at ``layers``: texts grouped under their roots
    (:func:`~commandv_interp.access.prefix.continuation_roots`), batch by batch of roots their prefix states (through
    the deepest layer), then every text of those roots from them; one-token texts whole."""
    from tqdm.auto import tqdm

    ids = [list(row) for row in access.tokenizer(list(texts))["input_ids"]]
    roots = continuation_roots(ids)
    out = {layer: torch.empty(len(texts), access.d_model) for layer in layers}  # filled row by row: one copy

    def keep(rows: list[int], got: dict[int, Tensor]) -> None:
        for layer in layers:
            out[layer][rows] = got[layer]

    whole = [i for i, r in enumerate(roots) if r < 0]
    for start in range(0, len(whole), batch_size):
        part = whole[start:start + batch_size]
        keep(part, access.read(access.encode([texts[i] for i in part]), layers))
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        if r >= 0:
            groups.setdefault(r, []).append(i)
    order = list(groups)
    for start in tqdm(range(0, len(order), batch_size), desc="profile", disable=not progress):
        part = order[start:start + batch_size]
        states = access.prefix_states([ids[r][:-1] for r in part], batch_size, through_layer=max(layers))
        members = [(j, i) for j, r in enumerate(part) for i in groups[r]]
        for s in range(0, len(members), batch_size):
            chunk = members[s:s + batch_size]
            suffixes = [ids[i][len(ids[roots[i]]) - 1:] for _, i in chunk]
            keep([i for _, i in chunk], access.read_suffix(states, [j for j, _ in chunk], Batch.right_padded(
                suffixes, access.tokenizer.pad_token_id), layers))
    return out


def profile(
    model: ModelAccess | object,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    chat_template: ChatTemplate = None,
    padding_side: str = "left",
    progress: bool = True,
    remote: bool | str = False,
    share_prefixes: bool = False,
) -> ActivationProfile:
    """Profile a model's block outputs at the last token of each prompt.

    Args:
        model: a :class:`ModelAccess` or anything :func:`open_model` accepts.
        prompts: the profile prompts (order matters; it is part of the fingerprint).
        layers: block indices (default: all).
        batch_size: prompts per forward pass.
        chat_template: ``True`` feeds each prompt through the tokenizer's chat template (one user turn and the
            generation prompt), a function maps each prompt to the text fed to the model, ``None`` feeds it as is.
        padding_side: "left" or "right"; the result does not depend on it.
        progress: show a tqdm bar.
        remote: nnsight's ``remote``: ``True`` profiles on NDIF, ``"local"`` simulates the server here. All
            batches go in one nnsight session (one request); only the last-token vectors come back.
        share_prefixes: a prompt whose tokens continue another prompt's of the list is read from that prompt's
            cached states (a pass over its extra tokens only; the same vectors to float rounding), where
            :func:`shares_prefixes` allows it (else ignored).

    Returns:
        An :class:`ActivationProfile` with float32 matrices of shape ``n_prompts × d_model``.

    Example:
        >>> p = profile(access, ["user : hi assistant :"])  # doctest: +SKIP
    """
    access = open_model(model)
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("profile() needs a non-empty list of prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    texts = format_prompts(access.tokenizer, prompts, chat_template)
    check_fits_context(access, texts)
    layers = list(range(access.n_layers)) if layers is None else access._check_layers(
        check_layers(layers, access.n_layers, "layers", access.name))  # duplicates and range refused, not merged
    if share_prefixes and shares_prefixes(access, remote):
        states = _read_sharing_prefixes(access, texts, layers, batch_size, progress)
    else:
        batches = [access.encode(texts[start:start + batch_size], padding_side=padding_side)
                   for start in range(0, len(texts), batch_size)]
        parts = access.read_batches(batches, layers, positions="last", remote=remote, progress=progress)
        # each layer's batch parts are released as they are concatenated: the peak holds one copy of the profile
        states = {layer: torch.cat([part.pop(layer) for part in parts]) for layer in layers}
    result = ActivationProfile.from_states(access, texts, states)
    check_profile_rank(result, needed=1)
    _warn_duplicates(result)
    if result.n_prompts < MIN_FIT_PROMPTS:
        warnings.warn(f"profiled {result.n_prompts} prompts, but fitting converters needs at least {MIN_FIT_PROMPTS} "
                      "(and more than the adapter's rank for method='interface'); profile more prompts",
                      DegenerateDataWarning, stacklevel=2)
    return result
