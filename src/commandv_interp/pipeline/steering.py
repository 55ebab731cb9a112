"""Consumes a donor and a recipient model, the donor's :class:`Adapter` and unlabeled prompts of
its task, produces a :class:`Steering`: the adapter's *mean* delta carried into the recipient as a steering vector,
the baseline of model-stitching and linear-representation-transfer work.

At each of the adapter's layers the donor's delta is averaged over the fitting prompts (on the donor's states
without the adapter: exact at the adapter's lowest layer, a first-order stand-in above it), mapped into the recipient
by the linear part of an affine converter fitted between the two residual streams (relative depth, the same
profiles as :func:`~commandv_interp.pipeline.label_free.transfer`), and added at the mapped recipient layer, at the
adapter's positions, whatever the prompt. Its scale is chosen by the same label-free donor-agreement criterion from
``SCALES``. Unlike a paste, the vector does not read the recipient's state: it cannot act on some prompts and leave
others alone, which is what a conditional behavior (refuse harmful requests, answer benign ones) needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter, NodiReFT
from commandv_interp.converters import fit_converters
from commandv_interp.paste import apply_adapter
from commandv_interp.pipeline.candidates import Candidate, Cost
from commandv_interp.pipeline.search import CandidateSearch, prepare
from commandv_interp.types import Float, PositionRule, Tensor

__all__ = ["Steering", "steering_adapter", "steering_transfer", "SCALES"]

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the mapped mean delta the criterion chooses from


@dataclass
class Steering:
    """A steering vector per recipient layer, at the scale the criterion chose.

    Attributes:
        vectors: recipient layer → the mapped mean delta (scale 1).
        alpha: the chosen scale.
        positions: where the vector is added (the adapter's positions).
        candidates: one row per scale, as :func:`~commandv_interp.pipeline.label_free.transfer`'s.
        flops, wall_s: the whole call.
    """

    vectors: dict[int, Float[Tensor, " d_recipient"]]
    alpha: float
    positions: PositionRule
    candidates: pd.DataFrame
    flops: float = 0.0
    wall_s: float = 0.0
    recipient: ModelAccess | None = field(default=None, repr=False)

    def compile(self) -> Adapter:
        """The steering as a native recipient adapter: a rank-1 NodiReFT per layer that reads nothing (``W = 0``)
        and writes ``α v`` (``b = α |v|``, ``P = v / |v|``)."""
        return steering_adapter(self.vectors, self.alpha, self.positions)

    def paste(self, recipient: ModelAccess | None = None):
        """The steering as a context manager on the recipient (``apply_adapter`` of :meth:`compile`)."""
        target = recipient if recipient is not None else self.recipient
        if target is None:
            raise ValueError("this Steering holds no recipient: pass paste(recipient)")
        return apply_adapter(target, self.compile())


def steering_adapter(vectors: dict[int, Float[Tensor, " d_recipient"]], alpha: float,
                     positions: PositionRule) -> Adapter:
    """A rank-1 NodiReFT per recipient layer that adds ``alpha · vectors[layer]`` whatever the state (see
    :meth:`Steering.compile`)."""
    interventions = {}
    for layer, v in sorted(vectors.items()):
        norm = float(v.norm())
        iv = NodiReFT(v.numel(), 1, proj_bias=False)
        with torch.no_grad():
            iv.learned_source.weight.zero_()
            iv.learned_source.bias.fill_(alpha * norm)
            iv.proj_layer.weight.copy_((v / norm if norm > 0 else v).float()[None])
        interventions[layer] = iv.requires_grad_(False)
    return Adapter(interventions, positions=positions, metadata={"kind": "steering", "alpha": alpha})


def steering_transfer(
    donor_model: ModelAccess,
    recipient_model: ModelAccess,
    adapter: Adapter,
    prompts: Sequence[str],
    scoring_fraction: float = 0.25,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Steering:
    """Carry the adapter's mean delta into the recipient as a steering vector, its scale chosen without labels.

    Arguments as :func:`~commandv_interp.pipeline.label_free.transfer`'s (the same split, targets and profiles).

    Returns:
        A :class:`Steering`.
    """
    start = time.perf_counter()
    setup = prepare(donor_model, recipient_model, adapter, prompts, scoring_fraction, max_new_tokens, batch_size,
                    seed)
    t0 = time.perf_counter()
    layer_map = setup.layer_maps["depth"]
    conv = fit_converters(setup.donor_profile, setup.recipient_profile, layer_map, "affine")
    plain_donor, _ = setup.plain_profiles()
    vectors: dict[int, Tensor] = {}
    with torch.no_grad():
        for donor_layer, iv in sorted(adapter.interventions.items()):
            mean_delta = iv.delta(plain_donor[donor_layer].float()).mean(0, keepdim=True)
            pair = conv.for_donor_layer(donor_layer)
            mapped = pair.to_recipient.linear(mean_delta.to(torch.float64)).float()[0]
            vectors[pair.recipient_layer] = vectors.get(pair.recipient_layer, 0) + mapped
    fit_s = time.perf_counter() - t0
    search = CandidateSearch(setup)
    for scale in tqdm(SCALES, desc="steering", disable=not progress):  # ascending: ties go to the smaller scale
        search.score(Candidate(f"steering/affine/depth×{scale:g}", 1, "steering", "depth",
                               steering_adapter(vectors, scale, adapter.positions), cost=Cost(0.0, fit_s)))
    table = search.table()
    table.insert(1, "alpha", [0.0] + list(SCALES))
    best = dict(zip(table.candidate, table.alpha))[search.best().name]
    return Steering(vectors, float(best), adapter.positions, table, search.flops,
                    time.perf_counter() - start, setup.recipient_model)

