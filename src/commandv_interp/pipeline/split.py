"""Consumes, per prompt, whether the donor's adapter changes its answer, produces the fitting and
the held-out scoring split of :func:`~commandv_interp.pipeline.search.prepare`, stratified on that flag.

The criterion averages the agreement over the changed and the unchanged scoring prompts. The unchanged ones carry
the side metric (a paste that refuses a benign request disagrees there): a 2-point false-refusal difference shows in
them only when enough of them are scored. A plain ``scoring_fraction`` of 128 prompts holds about 16 benign ones,
among which a paste refusing 5% of benign requests refuses none 44% of the time (0.95¹⁶). So each stratum gets at
least its share ``scoring_fraction`` and, when the stratum is larger, up to ``MIN_SCORING[stratum]`` prompts (never
more than half of it, so that fitting keeps the other half): with ≥ 128 unchanged prompts the scoring split holds
64 of them and misses a 5% difference 4% of the time (0.95⁶⁴).

A stratum never puts more than ``MAX_SCORING[stratum]`` prompts into scoring (32 changed, 64 unchanged): every
candidate and every polish round is scored on the whole scoring split within the polish's FLOPs budget, so a split
that grew with the prompts (a quarter of 512 is 128) would starve the polish of training rounds; the prompts beyond
the cap go to fitting, where the distillation learns from them. Up to 128 prompts per stratum the cap never binds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["stratified_split", "MIN_SCORING", "MAX_SCORING"]

MIN_SCORING = {True: 16, False: 64}  # scored prompts wanted per stratum (changed: target side; unchanged: side metric)
MAX_SCORING = {True: 32, False: 64}  # scored prompts at most per stratum (the rest fit: see the module doc)


def stratified_split(changed: Sequence[bool], scoring_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of the scoring and the fitting prompts, each stratum (changed or not) split on its own (seeded).

    Args:
        changed: per prompt, whether the adapter changes the donor's answer.
        scoring_fraction: the least share of each stratum that is held out for scoring.
        seed: the permutation of each stratum.

    Returns:
        ``(scoring, fitting)``: disjoint index lists covering every prompt, each in a seeded random order (so that
        any prefix, e.g. the first half that stage 1 scores, mixes the strata). A stratum of ``n`` prompts puts
        ``min(max(round(f n), min(MIN_SCORING[stratum], n // 2)), MAX_SCORING[stratum])`` into scoring (at least 1,
        and at most ``n − 1`` when ``n ≥ 2``).

    Example:
        >>> scoring, fitting = stratified_split([True] * 40 + [False] * 200, 0.25)
        >>> len(scoring), sum(i < 40 for i in scoring)
        (80, 16)
    """
    if not (isinstance(scoring_fraction, float | int) and 0 < scoring_fraction < 1):
        raise ValueError(f"scoring_fraction must be in (0, 1), got {scoring_fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    scoring: list[int] = []
    for stratum in (True, False):
        members = [i for i, c in enumerate(changed) if bool(c) == stratum]
        if not members:
            continue
        n = len(members)
        k = max(min(max(round(n * scoring_fraction), min(MIN_SCORING[stratum], n // 2)), MAX_SCORING[stratum]), 1)
        k = min(k, n - 1) if n >= 2 else 1
        order = torch.randperm(n, generator=generator).tolist()
        scoring += [members[j] for j in order[:k]]
    chosen = set(scoring)
    fitting = [i for i in range(len(changed)) if i not in chosen]
    shuffle = lambda rows: [rows[j] for j in torch.randperm(len(rows), generator=generator).tolist()]  # noqa: E731
    return shuffle(scoring), shuffle(fitting)
