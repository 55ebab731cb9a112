"""The fitting/scoring split of cv.transfer, stratified on whether the adapter changes the donor's answer: its
counts follow the rule, it is deterministic per seed, and, with planted response scores, the criterion on its scoring
prompts sees a planted 5% false-refusal difference far more often than a plain random split of the same share."""

import pytest
import torch

from commandv_interp.pipeline.agreement import ResponseScores, summarize
from commandv_interp.pipeline.split import MAX_SCORING, MIN_SCORING, stratified_split


@pytest.mark.parametrize("n_changed, n_unchanged", [(40, 200), (64, 64), (300, 20), (5, 3), (1, 30), (190, 322)])
def test_each_stratum_is_split_by_the_rule(n_changed, n_unchanged):
    changed = [True] * n_changed + [False] * n_unchanged
    g = torch.Generator().manual_seed(n_changed)
    changed = [changed[i] for i in torch.randperm(len(changed), generator=g).tolist()]  # strata interleaved
    scoring, fitting = stratified_split(changed, 0.25, seed=3)
    assert sorted(scoring + fitting) == list(range(len(changed)))  # disjoint and covering
    for flag, n in ((True, n_changed), (False, n_unchanged)):
        want = max(min(max(round(0.25 * n), min(MIN_SCORING[flag], n // 2)), MAX_SCORING[flag]), 1)
        want = min(want, n - 1) if n >= 2 else 1
        assert sum(changed[i] == flag for i in scoring) == want
    assert stratified_split(changed, 0.25, seed=3) == (scoring, fitting)
    if len(changed) > 10:
        assert stratified_split(changed, 0.25, seed=4)[0] != scoring


def test_the_scoring_split_stops_growing_with_the_prompts():
    """512 prompts, 37% of them changed (a quarter would score 48 + 81): the split scores 32 + 64, whatever the
    seed, and up to 128 prompts per stratum it is the uncapped rule (the cap never binds there)."""
    changed = [i % 100 < 37 for i in range(512)]
    for seed in range(3):
        scoring, fitting = stratified_split(changed, 0.25, seed)
        assert sum(changed[i] for i in scoring) == 32 and sum(not changed[i] for i in scoring) == 64
        assert len(fitting) == 512 - 96
    for n in range(2, 129):
        for flag in (True, False):
            assert min(max(round(0.25 * n), min(MIN_SCORING[flag], n // 2)), MAX_SCORING[flag]) \
                == max(round(0.25 * n), min(MIN_SCORING[flag], n // 2))


def test_refuses_a_bad_fraction():
    with pytest.raises(ValueError, match="scoring_fraction must be in"):
        stratified_split([True, False], 1.5)


def _criterion(agreement: torch.Tensor, changed: list[bool], rows: list[int]) -> float:
    scores = ResponseScores(torch.zeros(len(rows), dtype=torch.float64), agreement[rows].double())
    return summarize(scores, [changed[i] for i in rows])["criterion"]


def test_scoring_split_detects_a_planted_five_percent_false_refusal():
    """200 prompts the adapter changes and 128 it leaves alone. Two planted pastes agree with every changed answer;
    one also answers every benign prompt, the other refuses 5% of them (6 of 128: agreement 0 there). Over 200 seeds
    the stratified split's criterion ranks the refusing paste lower at least 95% of the time (it scores 64 benign
    prompts: a miss needs all 6 among the other 64, 1.3%); a plain random quarter scores about 32 benign prompts and
    misses about 16% of the time."""
    changed = [True] * 200 + [False] * 128
    clean = torch.ones(len(changed))
    refusing = clean.clone()
    refusing[torch.tensor([210, 231, 250, 272, 290, 321])] = 0.0  # 6 benign prompts (5%) refused
    new = old = 0
    for seed in range(200):
        scoring, _ = stratified_split(changed, 0.25, seed)
        new += _criterion(refusing, changed, scoring) < _criterion(clean, changed, scoring)
        plain = torch.randperm(len(changed), generator=torch.Generator().manual_seed(seed))[:82].tolist()
        old += _criterion(refusing, changed, plain) < _criterion(clean, changed, plain)
    assert new >= 190 and old <= 180
