"""The blind-criterion warning (pipeline/blind.py): its margin and tolerance on planted criteria, and cv.transfer
warning exactly when its candidates table shows the chosen edit within one scoring prompt of doing nothing."""

import warnings

import pytest

from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.pipeline.blind import BlindCriterionWarning, criterion_margin, warn_if_blind
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.scale import tolerance
from commandv_interp.pipeline.search import REFERENCE


class _Planted:
    """A finished search: the plain recipient's row, then the chosen candidate's (``n_changed`` of 32 prompts)."""

    def __init__(self, base: float, chosen: float, n_changed: int = 16):
        self.rows = [{"candidate": REFERENCE, "criterion": base, "n_changed": n_changed, "n_scoring": 32},
                     {"candidate": "x", "criterion": chosen, "n_changed": n_changed, "n_scoring": 32}]

    def row(self, candidate):
        return self.rows[-1]


def _chosen():
    return Candidate("x", 3, "scratch", "depth", random_adapter(16, seed=5), None)


@pytest.mark.parametrize("base, chosen, n_changed, margin, tol, warns", [
    (0.50, 0.52, 16, 0.02, 1 / 32, True),  # less than one prompt of a 16-prompt stratum (1 / 32)
    (0.50, 0.55, 16, 0.05, 1 / 32, False),
    (0.00, 0.0035, 32, 0.0035, 1 / 32, True),  # every answer changed: one stratum of 32
    (0.40, 0.40, 8, 0.00, 1 / 16, True),  # the smaller stratum (8) sets the tolerance
    (0.40, 0.30, 8, -0.10, 1 / 16, True),  # worse than doing nothing
])
def test_margin_and_tolerance_on_planted_criteria(base, chosen, n_changed, margin, tol, warns):
    search = _Planted(base, chosen, n_changed)
    got_margin, got_tol = criterion_margin(search, _chosen())
    assert got_margin == pytest.approx(margin) and got_tol == pytest.approx(tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_if_blind(search, _chosen()) is warns
    assert [w.category for w in caught] == ([BlindCriterionWarning] if warns else [])
    if warns:
        assert "'x'" in str(caught[0].message) and "check the result with labels" in str(caught[0].message)


def _run(donor, recipient, adapter, seed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = cv.transfer(donor, recipient, adapter, random_prompts(32, seed=11), max_new_tokens=8, polish_steps=0,
                        seed=seed, progress=False)
    c = t.candidates
    chosen, base = c[c.candidate == t.choice].iloc[-1], c[c.candidate == REFERENCE].iloc[0]
    tol = tolerance(int(chosen.n_changed), int(chosen.n_scoring - chosen.n_changed))  # tests/test_scale.py
    blind = chosen.criterion - base.criterion < tol
    return blind, any(w.category is BlindCriterionWarning for w in caught)


def test_transfer_warns_exactly_when_its_table_shows_a_blind_choice(hf_llama, nn_llama, nn_gpt2):
    donor, recipient, adapter = rotated_pair(hf_llama, nn_llama, rotation_seed=7)
    assert _run(donor, recipient, adapter, 0) == (False, False)  # an exact pair: its paste is seen
    unrelated = random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.6, seed=3)
    assert _run(nn_llama, nn_gpt2, unrelated, 0) == (True, True)  # an unrelated recipient, no polish: blind
    assert _run(nn_llama, nn_gpt2, unrelated, 2) == (False, False)  # another split: one paste is seen
