"""cv.transfer and its label-free criterion, on tiny models with an exactly corresponding recipient (the donor in a
rotated residual basis), where a faithful paste must reproduce the donor+adapter's generations token for token."""

import pytest
import torch

from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.converters import pasted_deltas
from commandv_interp.pipeline.agreement import donor_targets, score_responses, summarize


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


@pytest.fixture(scope="module")
def result(pair):
    donor, recipient, adapter = pair
    # 8-token answers, as the generations below are checked: a random tiny model never ends its answer, and over the
    # default 64 tokens the fitted (not exact) rotation's float error flips near-ties of the random logits
    return cv.transfer(donor, recipient, adapter, random_prompts(64, seed=11), max_new_tokens=8, progress=False)


@pytest.fixture(scope="module")
def exact(pair):
    """pinv converters on more prompts than the width: the exact rotation, so α = 1 reproduces the donor."""
    donor, recipient, adapter = pair
    prompts = random_prompts(80, seed=21)
    p_d, p_r = cv.profile(donor, prompts, progress=False), cv.profile(recipient, prompts, progress=False)
    return cv.fit_converters(p_d, p_r, cv.match_layers(p_d, p_r, "depth", adapter.layers), "pinv")


@pytest.mark.slow
def test_transfer_reproduces_the_donor_adapter_on_new_prompts(pair, result):
    donor, recipient, adapter = pair
    new = random_prompts(16, seed=99)
    with cv.apply_adapter(donor, adapter):
        want = donor.generate(donor.encode(new), max_new_tokens=8)
    plain = recipient.generate(recipient.encode(new), max_new_tokens=8)
    assert want != plain  # the adapter changes something, so reproducing it is not trivial
    with result.paste():
        got = recipient.generate(recipient.encode(new), max_new_tokens=8)
    assert got == want
    assert not recipient.active_edits
    best = result.candidates.sort_values("criterion").iloc[-1]
    assert best.criterion > 0.9 and best.agree_changed > 0.9


@pytest.mark.slow
def test_candidates_table_is_tidy_and_names_the_paper_exact_row(result):
    c = result.candidates
    assert {"candidate", "criterion", "lift", "fit_flops", "score_flops", "stage", "n_scoring"} <= set(c.columns)
    assert "alpha" not in c.columns and "alpha_rule" not in c.columns and result.alpha == 1.0  # no dead α machinery
    assert c.paper_exact.sum() == 1 and c[c.paper_exact].candidate.item() == "pinv/depth"
    assert c.iloc[0].method == "none"  # the recipient without a paste, for reference
    assert result.choice in set(c.candidate) and result.flops > 0
    assert set(result.layer_map) == {0, 2}


def test_the_choice_is_the_top_of_the_one_ranking_rule(pair):
    """The chosen candidate is the first row, by criterion then lift (ties: the earlier), among the candidates
    scored on all the scoring prompts; every scored name is a Candidate value the transfer kept."""
    from commandv_interp.pipeline.candidates import Candidate

    donor, recipient, adapter = pair
    t = cv.transfer(donor, recipient, adapter, random_prompts(32, seed=11), polish_steps=4, progress=False)
    c = t.candidates
    full = c[(c.n_scoring == c.n_scoring.max()) & (c.stage > 0)]
    top = max(range(len(full)), key=lambda i: (full.criterion.iloc[i], full.lift.iloc[i], -i))
    assert t.choice == full.candidate.iloc[top]
    assert set(c.candidate[c.stage > 0]) == set(t.considered)
    assert all(isinstance(k, Candidate) and k.name == n for n, k in t.considered.items())
    finalist = c[c.stage == 2].candidate.item()
    assert t.considered[finalist].stage == 2 and t.considered[finalist].is_paste


def test_criterion_ranks_a_wrong_alpha_lower(pair, exact):
    """Exact converters at α = 1 score what the donor with its own adapter scores on its own targets (the ceiling:
    below 1 only where a decoded target dropped special tokens); the same converters at 4× or 0.1× score lower."""
    donor, recipient, adapter = pair
    targets = donor_targets(donor, adapter, random_prompts(24, seed=5), 8)
    per_layer = pasted_deltas(recipient, adapter, exact)
    score = {a: summarize(score_responses(recipient, targets, per_layer, a), targets.changed)["criterion"]
             for a in (1.0, 4.0, 0.1)}
    native = {layer: [iv.delta] for layer, iv in adapter.interventions.items()}
    ceiling = summarize(score_responses(donor, targets, native, 1.0), targets.changed)["criterion"]
    assert score[1.0] == pytest.approx(ceiling, abs=1e-9) and ceiling > 0.9
    assert score[4.0] < score[1.0] and score[0.1] < score[1.0]


def test_agreement_is_the_greedy_prefix_a_generation_follows(pair, exact):
    """Teacher-forced prefix agreement equals the share of the target's words a greedy generation under the paste
    reproduces before it first diverges (word-level tokenizer: a token is a word; rows whose texts lost special
    tokens in decoding, so that a word is not a token, are left out)."""
    donor, recipient, adapter = pair
    targets = donor_targets(donor, adapter, random_prompts(24, seed=8), 6)  # whole words: 5 of the 6
    per_layer = pasted_deltas(recipient, adapter, exact)
    scores = score_responses(recipient, targets, per_layer, 1.7)
    with cv.paste(recipient, adapter, exact, alpha=1.7):
        generated = recipient.generate(recipient.encode(list(targets.prompts)), max_new_tokens=5)
    rows = [(a, t, g) for a, t, g in zip(scores.agreement.tolist(), targets.target, generated)
            if len(t.split()) == 5 and len(g.split()) == 5]
    assert len(rows) >= 8 and len({a for a, _, _ in rows}) > 1  # enough rows, and not all alike
    for agreement, target, gen in rows:
        want, got = target.split(), gen.split()
        prefix = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        assert agreement == pytest.approx(prefix / len(want))


@pytest.mark.slow
def test_save_and_load_round_trip_and_refuse_another_adapter(pair, result, tmp_path):
    donor, recipient, adapter = pair
    folder = result.save(tmp_path / "t")
    back = cv.load_transfer(folder, recipient)
    assert back.alpha == result.alpha and back.choice == result.choice
    batch = recipient.encode(random_prompts(4, seed=1))
    with result.paste():
        a = recipient.forward(batch)
    with back.paste():
        b = recipient.forward(batch)
    torch.testing.assert_close(a, b)
    cv.save_adapter(random_adapter(donor.d_model, layers=(0, 2), seed=9), folder / "adapter")
    with pytest.raises(ValueError, match="adapter/.*edited, truncated or swapped"):
        cv.load_transfer(folder)


def test_transfer_refuses_too_few_prompts_and_an_adapter_that_changes_nothing(pair):
    donor, recipient, adapter = pair
    with pytest.raises(ValueError, match="at least 16"):
        cv.transfer(donor, recipient, adapter, random_prompts(8), progress=False)
    silent = random_adapter(donor.d_model, layers=(0,), scale=0.0)
    with torch.no_grad():
        for iv in silent.interventions.values():
            for p in iv.parameters():
                p.zero_()
    with pytest.raises(ValueError, match="changes none"):
        cv.transfer(donor, recipient, silent, random_prompts(32, seed=2), progress=False)


def test_candidate_search_scores_only_the_prompts_not_scored_yet(pair, exact):
    """Successive halving reuses a candidate's per-prompt scores: scoring it on all prompts after half of them
    equals scoring it on all at once, and the lift of the plain recipient over itself is exactly one half."""
    from commandv_interp.pipeline.candidates import Candidate
    from commandv_interp.pipeline.search import REFERENCE, CandidateSearch, prepare

    donor, recipient, adapter = pair
    setup = prepare(donor, recipient, adapter, random_prompts(48, seed=4))
    candidate = Candidate("exact", 1, "pinv", "depth", adapter, exact)
    halving, direct = CandidateSearch(setup), CandidateSearch(setup)
    base = halving.table().iloc[0]
    assert base.candidate == REFERENCE and base.lift == pytest.approx(0.5)
    halving.score(candidate, n=6)
    spent = halving.flops
    full = halving.score(candidate)
    once = direct.score(candidate)
    assert full["n_scoring"] == once["n_scoring"] == len(setup.targets.prompts)
    for key in ("criterion", "lift", "agree_changed", "agree_unchanged"):
        assert full[key] == pytest.approx(once[key], nan_ok=True)
    assert halving.flops - spent == pytest.approx(full["score_flops"]) and 0 < full["score_flops"] < once["score_flops"]


@pytest.mark.slow
def test_steering_adds_a_constant_vector_and_compiles_to_the_same_edit(pair):
    """The steering baseline: its compiled rank-1 adapter adds exactly α·v at the last prompt token of every prompt,
    whatever the state (it reads nothing), and its scale is one of SCALES chosen on held-out prompts."""
    from commandv_interp.pipeline.steering import SCALES

    donor, recipient, adapter = pair
    steering = cv.steering_transfer(donor, recipient, adapter, random_prompts(48, seed=13), progress=False)
    assert steering.alpha in SCALES and set(steering.vectors) <= set(range(recipient.n_layers))
    assert len(steering.candidates) == len(SCALES) + 1
    batch = recipient.encode(random_prompts(6, seed=2))
    lowest = min(steering.vectors)  # nothing below it is edited: the read there shows the vector alone
    plain = recipient.read(batch, [lowest])[lowest]
    with steering.paste():
        edited = recipient.read(batch, [lowest])[lowest]
    assert not recipient.active_edits
    torch.testing.assert_close(edited - plain, (steering.alpha * steering.vectors[lowest]).expand_as(plain),
                               atol=1e-4, rtol=1e-4)
