"""Consumes the candidate search after the polish, produces the polished edit at a scale chosen on the held-out
scoring prompts: the middle of the range of scales the criterion cannot tell from the best.

A polished NodiReFT's delta ``act(W h + b) P`` scales exactly with ``P``, and the scale is where a distillation of a
few dozen steps is least settled: a refusal edit that refuses every held-out harmful request at scale 1 can stop
short of new requests (the test prompts' unseen objects), or one step later refuse some harmless ones. The scoring
prompts see each error only once the edit crosses it, so the best scale they show is often at the edge of the range
that works. :func:`choose_scale` scores the chosen polished adapter at the scales :data:`SCALES` (a geometric grid
around 1), takes the contiguous range around the best whose criterion is within one scoring prompt of it
(:func:`tolerance`), and chooses the scale in the middle of that range (in log scale; scored too when it is not on
the grid): the edit with the most room on both sides. Forward passes only; the scorings are counted in the search's
FLOPs. A transfer whose choice is a paste (not polished) is left as it is.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch

from commandv_interp.adapters import Adapter
from commandv_interp.adapters.interventions import NodiReFT
from commandv_interp.pipeline.candidates import Candidate, Cost

__all__ = ["SCALES", "choose_scale", "scaled", "plateau_scale", "tolerance", "scale_of"]

SCALES = (0.64, 0.8, 1.25, 1.5625)
"""The scales scored beside 1 (powers of 1.25)."""
_TAG = "*scale="


def scaled(adapter: Adapter, factor: float) -> Adapter:
    """A copy of a NodiReFT ``adapter`` whose every delta is ``factor`` times the original's (``P ← factor · P``).

    Raises:
        ValueError: ``factor`` is not positive, or an intervention is not a NodiReFT (its delta does not scale
            with one factor).
    """
    if not factor > 0:
        raise ValueError(f"a scale must be positive, got {factor!r}")
    kinds = sorted({type(iv).__name__ for iv in adapter.interventions.values() if not isinstance(iv, NodiReFT)})
    if kinds:
        raise ValueError(f"only NodiReFT deltas scale with one factor; this adapter has {kinds}")
    ivs = {}
    for layer, iv in adapter.interventions.items():
        ivs[layer] = copy.deepcopy(iv)
        with torch.no_grad():
            ivs[layer].proj_layer.weight.mul_(factor)
    meta = dict(adapter.metadata) | {"scale": float(factor)}
    return Adapter(ivs, positions=adapter.positions, first_last_k=adapter.first_last_k, metadata=meta)


def tolerance(n_changed: int, n_unchanged: int) -> float:
    """One scoring prompt's weight in the balanced criterion: ``1 / (strata · prompts of the smaller stratum)``.

    >>> tolerance(16, 16), tolerance(32, 0)
    (0.03125, 0.03125)
    """
    sizes = [n for n in (n_changed, n_unchanged) if n > 0]
    if not sizes:
        raise ValueError("no scoring prompts: nothing to compare scales on")
    return 1.0 / (len(sizes) * min(sizes))


def plateau_scale(criterion: Mapping[float, float], tol: float) -> tuple[float, float]:
    """The range ``(low, high)`` of scales around the best whose criterion is within ``tol`` of it, contiguous on
    the sorted scales (the best nearest 1 in log scale when several tie).

    >>> plateau_scale({0.8: 0.9, 1.0: 1.0, 1.25: 0.99, 1.5625: 0.8}, 0.03)
    (1.0, 1.25)
    >>> plateau_scale({0.64: 0.5, 0.8: 0.7, 1.0: 0.7, 1.25: 0.7}, 0.01)
    (0.8, 1.25)
    """
    scales = sorted(criterion)
    top = max(criterion.values())
    best = min((s for s in scales if criterion[s] >= top - 1e-12), key=lambda s: abs(math.log(s)))
    i = j = scales.index(best)
    while i > 0 and criterion[scales[i - 1]] >= top - tol - 1e-12:
        i -= 1
    while j < len(scales) - 1 and criterion[scales[j + 1]] >= top - tol - 1e-12:
        j += 1
    return scales[i], scales[j]


def scale_of(name: str) -> float:
    """The scale a candidate's name records (``…*scale=<s>``), 1 for a name without one.

    >>> scale_of("scratch+polish/8/lr=0.004*scale=1.25"), scale_of("interface/depth")
    (1.25, 1.0)
    """
    head, tag, value = str(name).rpartition(_TAG)
    return float(value) if tag and head else 1.0


def choose_scale(search, chosen: Candidate) -> Candidate:
    """``chosen`` at the scale in the middle of the criterion's plateau (see the module doc); ``chosen`` itself
    when it is a paste, a start that no polish round trained, or not a NodiReFT adapter. Every scaled adapter is a
    stage-4 candidate of ``search`` (a :class:`~commandv_interp.pipeline.search.CandidateSearch`)."""
    if chosen.is_paste or chosen.stage != 3 or chosen.polish_steps == 0 \
            or not all(isinstance(iv, NodiReFT) for iv in chosen.edit.interventions.values()):
        return chosen
    row = search.row(chosen)
    tol = tolerance(int(row["n_changed"]), int(row["n_scoring"]) - int(row["n_changed"]))
    criterion = {1.0: _value(row["criterion"])}
    made = {1.0: chosen}
    for s in SCALES:
        made[s] = _scaled_candidate(chosen, s)
        criterion[s] = _value(search.score(made[s])["criterion"])
    low, high = plateau_scale(criterion, tol)
    middle = round(math.sqrt(low * high), 4)
    if middle not in made:
        made[middle] = _scaled_candidate(chosen, middle)
        criterion[middle] = _value(search.score(made[middle])["criterion"])
        if criterion[middle] < max(criterion.values()) - tol - 1e-12:  # the middle fell off: the nearest scored one
            middle = min((s for s in made if low <= s <= high and s != middle),
                         key=lambda s: (abs(math.log(s / math.sqrt(low * high))), abs(math.log(s))))
    return made[middle]


def _value(x: object) -> float:
    """A criterion as the ranking reads it: a missing or NaN value counts as 0."""
    return 0.0 if x is None or x != x else float(x)  # type: ignore[arg-type]


def _scaled_candidate(chosen: Candidate, factor: float) -> Candidate:
    return Candidate(f"{chosen.name}{_TAG}{factor:g}", 4, chosen.method, chosen.match, scaled(chosen.edit, factor),
                     None, Cost(), chosen.polish_steps, polish_lr=chosen.polish_lr,
                     polish_budget_flops=chosen.polish_budget_flops)
