"""Stage 3 (correspondence): consumes two :class:`ActivationProfile` s, produces a :class:`LayerMap`.

Two rules: the paper's relative depth, and similarity search over the full ``L_D × L_R`` matrix of a
chosen metric, matched per donor layer (argmax) or as a monotone alignment (donor order preserved).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from commandv_interp.io import read_json, write_json
from commandv_interp.profiles import ActivationProfile
from commandv_interp.correspondence.similarity import Metric, similarity_fn
from commandv_interp.types import Float, Tensor, check_choice

__all__ = ["LayerMap", "match_layers", "relative_depth", "relative_depth_map", "similarity_matrix",
           "monotone_alignment", "MatchMethod"]

MatchMethod = Literal["depth", "similarity"]
Assignment = Literal["argmax", "monotone"]
KIND = "commandv.layer_map"


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
    def from_dict(cls, d: dict) -> "LayerMap":
        if d.get("kind") != KIND:
            raise ValueError(f"not a commandv layer map (kind={d.get('kind')!r})")
        sim = None if d["similarity"] is None else torch.tensor(d["similarity"], dtype=torch.float64)
        return cls(tuple(tuple(p) for p in d["pairs"]),
                   tuple(float("nan") if s is None else s for s in d["scores"]), d["method"], d["metric"],
                   d["assignment"], sim, tuple(d["donor_layers"]), tuple(d["recipient_layers"]), d["donor_model"],
                   d["recipient_model"], d["prompts_fingerprint"], d.get("extra", {}))

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LayerMap":
        return cls.from_dict(read_json(path))


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
                        donor.model_name, recipient.model_name, donor.prompts_fingerprint)
    sim = similarity_matrix(donor, recipient, metric, rows, progress)
    picks = monotone_alignment(sim) if assignment == "monotone" else sim.argmax(dim=1).tolist()
    pairs = tuple((layer, cols[j]) for layer, j in zip(rows, picks))
    scores = tuple(float(sim[i, j]) for i, j in enumerate(picks))
    return LayerMap(pairs, scores, method, metric, assignment, sim, tuple(rows),
                    tuple(cols), donor.model_name, recipient.model_name, donor.prompts_fingerprint)
