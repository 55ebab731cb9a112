"""Consumes two :class:`ActivationProfile` s, produces a :class:`LayerMap`.

Two rules: the paper's relative depth, and similarity search over the full ``L_D × L_R`` matrix of a
chosen metric, matched per donor layer (argmax) or as a monotone alignment (donor order preserved).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from commandv_interp.io import DegenerateDataWarning, check_fields, read_json, write_json
from commandv_interp.profiles import ActivationProfile, check_profile_rank
from commandv_interp.correspondence.similarity import Metric, similarity_fn
from commandv_interp.types import Float, Tensor, check_choice

__all__ = ["LayerMap", "match_layers", "relative_depth", "relative_depth_map", "similarity_matrix",
           "monotone_alignment", "MatchMethod"]

MatchMethod = Literal["depth", "similarity"]
Assignment = Literal["argmax", "monotone"]
KIND = "commandv.layer_map"
_SCHEMA = {"pairs": list, "scores": list, "method": str, "metric": (str, type(None)),
           "assignment": (str, type(None)), "similarity": (list, type(None)), "donor_layers": list,
           "recipient_layers": list, "donor_model": str, "recipient_model": str, "prompts_fingerprint": str,
           "extra": dict}


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@dataclass(frozen=True)
class LayerMap:
    """Donor layer → recipient layer, with a score per pair.

    Attributes:
        pairs: ``((donor_layer, recipient_layer), ...)`` in donor order.
        scores: the similarity of each pair (``nan`` for the depth rule without profiles' metric).
        method, metric, assignment: how the map was chosen.
        similarity: the full matrix (rows ``donor_layers``, columns ``recipient_layers``) if computed.
        donor_model, recipient_model, prompts_fingerprint: provenance.
    """

    pairs: tuple[tuple[int, int], ...]
    scores: tuple[float, ...]
    method: str
    metric: str | None = None
    assignment: str | None = None
    similarity: Float[Tensor, "n_donor_layers n_recipient_layers"] | None = None
    donor_layers: tuple[int, ...] = ()
    recipient_layers: tuple[int, ...] = ()
    donor_model: str = ""
    recipient_model: str = ""
    prompts_fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [p for p in self.pairs if not (isinstance(p, tuple) and len(p) == 2 and all(map(_is_index, p)))]
        if bad:
            raise ValueError(f"layer map pairs must be (donor_layer, recipient_layer) with ints >= 0, got {bad[0]!r}; "
                             "re-create the map")
        donors = [d for d, _ in self.pairs]
        dupes = sorted({d for d in donors if donors.count(d) > 1})
        if dupes:
            raise ValueError(f"layer map maps donor layers {dupes} more than once; keep one recipient layer per donor "
                             "layer")
        if len(self.scores) != len(self.pairs):
            raise ValueError(f"layer map has {len(self.pairs)} pairs but {len(self.scores)} scores; re-create the map")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"layer map method must be a name (e.g. 'depth', 'similarity', 'manual'), got "
                             f"{self.method!r}")
        if self.similarity is not None and tuple(self.similarity.shape) != (len(self.donor_layers),
                                                                            len(self.recipient_layers)):
            raise ValueError(f"layer map similarity has shape {tuple(self.similarity.shape)} but "
                             f"{len(self.donor_layers)} donor x {len(self.recipient_layers)} recipient layers; "
                             "re-create the map")

    def check_profiles(self, donor: ActivationProfile, recipient: ActivationProfile) -> None:
        """Refuse profiles of other models than this map's (names, config hashes when recorded) or whose models lack
        its layers."""
        for side, prof, name, hash_ in (
                ("donor", donor, self.donor_model, self.extra.get("donor_config_hash")),
                ("recipient", recipient, self.recipient_model, self.extra.get("recipient_config_hash"))):
            if (name and name != prof.model_name) or (hash_ and hash_ != prof.config_hash):
                raise ValueError(f"the layer map's {side} is {name!r} (config hash {hash_!r}) but the {side} profile "
                                 f"is of {prof.model_name!r} ({prof.config_hash!r}); match layers of these profiles")
        for side, index, prof in (("donor", 0, donor), ("recipient", 1, recipient)):
            bad = sorted({p[index] for p in self.pairs if p[index] >= prof.n_layers})
            if bad:
                raise ValueError(f"the layer map names {side} layers {bad} but {prof.model_name!r} has "
                                 f"{prof.n_layers} layers; match layers of these models")

    def as_dict(self) -> dict[int, int]:
        return dict(self.pairs)

    def __getitem__(self, donor_layer: int) -> int:
        mapping = self.as_dict()
        if donor_layer not in mapping:
            raise KeyError(f"donor layer {donor_layer} is not mapped (mapped: {sorted(mapping)})")
        return mapping[donor_layer]

    def restrict(self, donor_layers: Sequence[int]) -> "LayerMap":
        """Only the pairs of the given donor layers (e.g. an adapter's layers)."""
        keep = [i for i, (d, _) in enumerate(self.pairs) if d in set(donor_layers)]
        return LayerMap(tuple(self.pairs[i] for i in keep), tuple(self.scores[i] for i in keep), self.method,
                        self.metric, self.assignment, self.similarity, self.donor_layers, self.recipient_layers,
                        self.donor_model, self.recipient_model, self.prompts_fingerprint, dict(self.extra))

    def to_dict(self) -> dict:
        return {
            "kind": KIND, "pairs": [list(p) for p in self.pairs],
            "scores": [None if math.isnan(s) else s for s in self.scores], "method": self.method,
            "metric": self.metric, "assignment": self.assignment,
            "similarity": None if self.similarity is None else self.similarity.tolist(),
            "donor_layers": list(self.donor_layers), "recipient_layers": list(self.recipient_layers),
            "donor_model": self.donor_model, "recipient_model": self.recipient_model,
            "prompts_fingerprint": self.prompts_fingerprint, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: object) -> "LayerMap":
        """The map :meth:`to_dict` wrote; refuses malformed pairs, scores, layers and similarity (``ValueError``)."""
        if not isinstance(d, dict):
            raise ValueError(f"a layer map is a JSON object, got a {type(d).__name__}; re-create it with "
                             "`commandv match`")
        if d.get("kind") != KIND:
            raise ValueError(f"not a commandv layer map (kind={d.get('kind')!r}, expected {KIND!r})")
        check_fields(d, _SCHEMA, "layer map")
        for i, p in enumerate(d["pairs"]):
            if not (isinstance(p, list) and len(p) == 2 and all(map(_is_index, p))):
                raise ValueError(f"layer map pair {i} is {p!r}; each pair must be [donor_layer, recipient_layer] with "
                                 "ints >= 0")
        scores = d["scores"]
        if not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in scores):
            raise ValueError(f"layer map scores must be numbers or null, got {scores!r}")
        for name in ("donor_layers", "recipient_layers"):
            if not all(map(_is_index, d[name])):
                raise ValueError(f"layer map {name} must be ints >= 0, got {d[name]!r}")
        sim = d["similarity"]
        if sim is not None:
            rows_ok = all(isinstance(r, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      for x in r) for r in sim)
            if not rows_ok or len({len(r) for r in sim}) > 1:
                raise ValueError("layer map similarity must be a matrix of numbers (equal-length rows); re-create it")
            sim = torch.tensor(sim, dtype=torch.float64).reshape(len(sim), -1 if sim and sim[0] else 0)
        return cls(tuple(tuple(p) for p in d["pairs"]), tuple(float("nan") if s is None else float(s) for s in scores),
                   d["method"], d["metric"], d["assignment"], sim, tuple(d["donor_layers"]),
                   tuple(d["recipient_layers"]), d["donor_model"], d["recipient_model"], d["prompts_fingerprint"],
                   d["extra"])

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LayerMap":
        try:
            return cls.from_dict(read_json(path))
        except ValueError as err:
            if str(path) in str(err):
                raise
            raise ValueError(f"{str(path)!r}: {err}") from None


def relative_depth(donor_layer: int, n_donor_layers: int, n_recipient_layers: int) -> int:
    """The paper's rule: the recipient layer nearest to ``l_D · L_R / L_D`` (ties round up).

    >>> [relative_depth(l, 4, 4) for l in range(4)]
    [0, 1, 2, 3]
    >>> [relative_depth(l, 6, 4) for l in range(6)]
    [0, 1, 1, 2, 3, 3]
    """
    if not 0 <= donor_layer < n_donor_layers:
        raise ValueError(f"donor_layer={donor_layer} out of range for {n_donor_layers} layers")
    return min(n_recipient_layers - 1, int(math.floor(donor_layer * n_recipient_layers / n_donor_layers + 0.5)))


def relative_depth_map(donor_layers: Sequence[int], n_donor_layers: int, n_recipient_layers: int,
                       donor_model: str = "", recipient_model: str = "") -> LayerMap:
    """The paper's layer map from the two depths alone (no profiles needed; scores are ``nan``): the pairs
    :func:`match_layers` gives with ``method="depth"``.

    >>> relative_depth_map([0, 2, 4], 5, 4).pairs
    ((0, 0), (2, 2), (4, 3))
    """
    rows = [int(layer) for layer in donor_layers]
    pairs = tuple((layer, relative_depth(layer, n_donor_layers, n_recipient_layers)) for layer in rows)
    return LayerMap(pairs, (float("nan"),) * len(pairs), "depth", donor_layers=tuple(rows),
                    recipient_layers=tuple(range(n_recipient_layers)), donor_model=donor_model,
                    recipient_model=recipient_model)


def similarity_matrix(
    donor: ActivationProfile, recipient: ActivationProfile, metric: Metric = "cka",
    donor_layers: Sequence[int] | None = None, progress: bool = False,
) -> Float[Tensor, "n_donor_layers n_recipient_layers"]:
    """``S[i, j] = metric(donor[donor_layers[i]], recipient[recipient.layers[j]])`` (float64)."""
    donor.check_paired_with(recipient)
    fn = similarity_fn(metric)
    rows = list(donor.layers if donor_layers is None else donor_layers)
    sim = torch.zeros(len(rows), len(recipient.layers), dtype=torch.float64)
    for i, dl in enumerate(tqdm(rows, desc=f"similarity ({metric})", disable=not progress)):
        for j, rl in enumerate(recipient.layers):
            sim[i, j] = fn(donor[dl], recipient[rl])
    return sim


def monotone_alignment(sim: Float[Tensor, "n_donor_layers n_recipient_layers"]) -> list[int]:
    """Column per row maximizing the total score subject to non-decreasing columns (dynamic programming).

    >>> monotone_alignment(torch.tensor([[0., 1.], [1., 0.]]))  # argmax would cross
    [0, 0]
    """
    n_rows, n_cols = sim.shape
    best = sim[0].clone()
    back = torch.zeros(n_rows, n_cols, dtype=torch.long)
    for i in range(1, n_rows):
        prefix_val, prefix_arg = torch.cummax(best, dim=0)
        back[i] = prefix_arg
        best = prefix_val + sim[i]
    cols = [int(best.argmax())]
    for i in range(n_rows - 1, 0, -1):
        cols.append(int(back[i, cols[-1]]))
    return cols[::-1]


def match_layers(
    donor_profile: ActivationProfile,
    recipient_profile: ActivationProfile,
    method: MatchMethod = "depth",
    donor_layers: Sequence[int] | None = None,
    metric: Metric = "cka",
    assignment: Assignment = "argmax",
    progress: bool = False,
) -> LayerMap:
    """Match each donor layer to a recipient layer.

    Args:
        donor_profile, recipient_profile: profiles over the same prompts (same fingerprint).
        method: ``"depth"`` (the paper's relative depth) or ``"similarity"`` (search with ``metric``).
        donor_layers: donor layers to map (default: all profiled donor layers).
        metric: similarity metric (``cka``, ``debiased_cka``, ``r2``, ``mutual_knn``): the search's for
            ``similarity``; for ``depth`` only the chosen pairs are scored with it (no matrix is computed).
        assignment: ``"argmax"`` per donor layer or ``"monotone"`` (order-preserving DP).

    Returns:
        A :class:`LayerMap` (carrying the similarity matrix for ``similarity``).
    """
    donor, recipient = donor_profile, recipient_profile
    check_choice("method", method, get_args(MatchMethod))
    check_choice("assignment", assignment, get_args(Assignment))
    donor.check_paired_with(recipient)
    for prof in (donor, recipient):
        similarity = method == "similarity"  # 1-2 rows or constant ones: every layer looks alike
        check_profile_rank(prof, needed=3 if similarity else 1, refuse_constant=similarity)
    provenance = {"donor_config_hash": donor.config_hash, "recipient_config_hash": recipient.config_hash}
    rows = list(donor.layers if donor_layers is None else donor_layers)
    missing = [layer for layer in rows if layer not in donor.activations]
    if missing:
        raise ValueError(f"donor layers {missing!r} were not profiled; profile them or pass donor_layers")
    cols = recipient.layers
    if method == "depth":
        targets = [relative_depth(layer, donor.n_layers, recipient.n_layers) for layer in rows]
        absent = [t for t in targets if t not in cols]
        if absent:
            raise ValueError(f"relative depth needs recipient layers {absent!r}, which were not profiled")
        fn = similarity_fn(metric)
        scores = tuple(float(fn(donor[d], recipient[r])) for d, r in zip(rows, targets))
        return LayerMap(tuple(zip(rows, targets)), scores, method, metric, None, None, tuple(rows), tuple(cols),
                        donor.model_name, recipient.model_name, donor.prompts_fingerprint, provenance)
    sim = similarity_matrix(donor, recipient, metric, rows, progress)
    _check_similarity(sim, metric, donor, recipient)
    picks = monotone_alignment(sim) if assignment == "monotone" else sim.argmax(dim=1).tolist()
    pairs = tuple((layer, cols[j]) for layer, j in zip(rows, picks))
    scores = tuple(float(sim[i, j]) for i, j in enumerate(picks))
    return LayerMap(pairs, scores, method, metric, assignment, sim, tuple(rows),
                    tuple(cols), donor.model_name, recipient.model_name, donor.prompts_fingerprint, provenance)


def _check_similarity(sim: Tensor, metric: str, donor: ActivationProfile, recipient: ActivationProfile) -> None:
    """Refuse a similarity matrix with NaN (constant profiles); warn when every donor layer picks one recipient
    layer because the scores do not tell layers apart."""
    if not bool(torch.isfinite(sim).all()):
        raise ValueError(f"the {metric} similarity of {donor.model_name!r} and {recipient.model_name!r} is NaN/inf "
                         f"for {int((~torch.isfinite(sim)).sum())} layer pairs (constant profiles?); profile more "
                         "distinct prompts")
    spread = float(sim.max() - sim.min())
    if sim.shape[0] > 1 and sim.shape[1] > 1 and spread <= 1e-6 * max(1.0, float(sim.abs().max())):
        warnings.warn(f"the {metric} similarity is the same ({float(sim.max()):.4g}) for every layer pair of "
                      f"{donor.model_name!r} and {recipient.model_name!r}, so the map collapses onto one recipient "
                      f"layer; profile more distinct prompts (now {donor.n_prompts}) or use method='depth'",
                      DegenerateDataWarning, stacklevel=3)
