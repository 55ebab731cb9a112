"""The polish stage of cv.transfer (distillation from the donor+adapter's answers) and the whole-word targets it
learns: closed forms (a rebalanced NodiReFT is the same edit; FLOPs are 4 · params · tokens), a planted teacher
(a recipient adapter distilled from a donor that is the recipient in a rotated basis), and the saved transfer."""

import pandas as pd
import pytest
import torch

from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.adapters.edits import adapter_edits
from commandv_interp.pipeline.agreement import greedy_responses
from commandv_interp.pipeline.polish import Distillation, balanced, finetune_flops_estimate, fresh_adapter
from commandv_interp.pipeline.candidates import rank
from commandv_interp.pipeline.polish_race import PolishPlan, race


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=5)


def test_balanced_is_the_same_edit_with_factors_of_equal_rms():
    iv = random_adapter(16, layers=(0,), scale=0.5, rank=4).interventions[0]
    with torch.no_grad():
        iv.proj_layer.weight.mul_(40.0)  # a compiled paste can put the converters' scale into one factor
    out = balanced(iv)
    h = torch.randn(7, 16)
    torch.testing.assert_close(out.delta(h), iv.delta(h), rtol=1e-5, atol=1e-5)
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    assert rms(out.learned_source.weight) == pytest.approx(rms(out.proj_layer.weight), rel=1e-5)
    assert rms(iv.proj_layer.weight) > 10 * rms(iv.learned_source.weight)  # the input is untouched


def test_whole_words_drop_only_a_word_the_token_limit_may_have_cut(nn_llama):
    """A response that ran to max_new_tokens loses its last word; one that ended (EOS) keeps all of it."""
    prompts = random_prompts(12, seed=3)
    batch = nn_llama.encode(prompts)
    ids = nn_llama.generate_ids(batch, max_new_tokens=5)
    assert ids.shape == (len(prompts), 5)
    full = nn_llama.generate(batch, max_new_tokens=5)
    assert full == nn_llama.decode_continuations(ids)
    trimmed = greedy_responses(nn_llama, prompts, 5, batch_size=5, whole_words=True)
    eos = nn_llama.tokenizer.eos_token_id
    for row, whole, cut in zip(ids.tolist(), full, trimmed):
        if eos in row or " " not in whole:
            assert cut == whole
        else:
            assert cut == whole.rsplit(" ", 1)[0]


def test_distillation_learns_a_planted_teacher_and_counts_finetune_flops(pair):
    """The teacher is the donor with its adapter; the recipient is the donor in a rotated basis, so the exact paste
    (pinv converters on more prompts than the width), compiled, reproduces the teacher: its loss is the floor. Started
    from that paste at the wrong scale (α = 0.3), distillation closes most of the gap to the floor, leaves its start
    untouched and counts 4 · params · tokens."""
    donor, recipient, adapter = pair
    fit = random_prompts(80, seed=21)
    p_d, p_r = cv.profile(donor, fit, progress=False), cv.profile(recipient, fit, progress=False)
    exact = cv.fit_converters(p_d, p_r, cv.match_layers(p_d, p_r, "depth", adapter.layers), "pinv")
    prompts = random_prompts(48, seed=6)
    with torch.no_grad(), donor.edited(adapter_edits(donor, adapter)):
        answers = greedy_responses(donor, prompts, 6, 16, whole_words=True)

    def loss_of(start) -> float:
        return Distillation(recipient, start, prompts, answers).loss_on(prompts, answers)

    floor = loss_of(cv.compile_paste(adapter, exact, alpha=1.0))
    start = cv.compile_paste(adapter, exact, alpha=0.3)
    gap = loss_of(start) - floor
    assert gap > 0.02  # the wrong scale is measurably worse (a random tiny model predicts flatly: small losses)
    before = {k: v.clone() for k, v in start.interventions[0].state_dict().items()}
    flags = [p.requires_grad for p in recipient.torch_module.parameters()]
    trainer = Distillation(recipient, start, prompts, answers, batch_size=16)
    trainer.run(30)
    assert trainer.steps == 30 and loss_of(trainer.adapter()) - floor < 0.5 * gap
    n = sum(p.numel() for p in recipient.torch_module.parameters())
    assert trainer.flops == pytest.approx(4.0 * n * trainer.tokens)
    for k, v in start.interventions[0].state_dict().items():
        torch.testing.assert_close(v, before[k])
    out = trainer.adapter()
    assert out.metadata["polish"]["steps"] == 30 and out.layers == start.layers
    assert not any(p.requires_grad for iv in out.interventions.values() for p in iv.parameters())
    assert [p.requires_grad for p in recipient.torch_module.parameters()] == flags  # the base is left as it was


@pytest.mark.slow
def test_scratch_start_is_the_distillation_baseline_and_round_trips(pair, tmp_path):
    """start="scratch": no paste, a polished fresh adapter, scored round by round; saved and loaded it gives the same
    outputs, and a tampered polished adapter is refused."""
    donor, recipient, adapter = pair
    t = cv.transfer(donor, recipient, adapter, random_prompts(48, seed=12), start="scratch", polish_steps=8,
                    progress=False)
    assert t.converters is None and t.layer_map == {} and t.polished is not None
    assert t.choice.startswith("scratch+polish/") and t.compile() is t.polished
    rounds = t.candidates[t.candidates.stage == 3]
    assert len(rounds) >= 1 and (rounds.fit_flops > 0).all() and set(rounds.polish_steps) <= {4, 8}
    assert t.flops > rounds.fit_flops.sum() + rounds.score_flops.sum()
    batch = recipient.encode(random_prompts(4, seed=2))
    with t.paste():
        a = recipient.forward(batch)
    assert not recipient.active_edits
    back = cv.load_transfer(t.save(tmp_path / "s"), recipient)
    assert back.polished is not None and back.converters is None
    with back.paste():
        b = recipient.forward(batch)
    torch.testing.assert_close(a, b)
    cv.save_adapter(fresh_adapter(recipient, [0, 2], rank=4, seed=9), tmp_path / "s" / "polished")
    with pytest.raises(ValueError, match="polished/.*edited, truncated or swapped"):
        cv.load_transfer(tmp_path / "s")


def test_transfer_refuses_bad_polish_arguments(pair):
    donor, recipient, adapter = pair
    prompts = random_prompts(32, seed=2)
    with pytest.raises(ValueError, match="start='fresh' is not one of"):
        cv.transfer(donor, recipient, adapter, prompts, start="fresh", progress=False)
    with pytest.raises(ValueError, match="polish_steps must be an int >= 0"):
        cv.transfer(donor, recipient, adapter, prompts, polish_steps=-1, progress=False)
    with pytest.raises(ValueError, match="start='scratch' learns everything in the polish"):
        cv.transfer(donor, recipient, adapter, prompts, start="scratch", polish_steps=0, progress=False)


@pytest.fixture(scope="module")
def teacher(pair):
    """The rotated pair's teacher pairs (donor+adapter answers) and planted strata (the random adapter changes every
    answer of the tiny donor; which pairs count as changed only steers the batches' draws here)."""
    donor, recipient, adapter = pair
    prompts = random_prompts(40, seed=31)
    with torch.no_grad(), donor.edited(adapter_edits(donor, adapter)):
        answers = greedy_responses(donor, prompts, 5, 16, whole_words=True)
    return prompts, answers, [i % 3 == 0 for i in range(len(prompts))]


def test_batches_draw_half_from_each_stratum(pair, teacher):
    _, recipient, _ = pair
    prompts, answers, changed = teacher
    trainer = Distillation(recipient, fresh_adapter(recipient, [1], rank=2), prompts, answers, changed,
                           batch_size=10, seed=4)
    for _ in range(5):
        idx = trainer.next_indices()
        assert len(idx) == 10 and sum(changed[i] for i in idx) == 5
    again = Distillation(recipient, fresh_adapter(recipient, [1], rank=2), prompts, answers, changed,
                         batch_size=10, seed=4)
    assert again.next_indices() == Distillation(recipient, fresh_adapter(recipient, [1], rank=2), prompts, answers,
                                                changed, batch_size=10, seed=4).next_indices()  # per seed


def _planted_scorer(best_lr: float, recipient):
    """A scorer whose criterion peaks at ``best_lr`` (planted), with a lift that grows with the steps."""
    import math

    def score(start: str, candidate: str, adapter, info: dict) -> dict:
        gap = abs(math.log(info["polish_lr"] / best_lr))
        return {"candidate": candidate, "criterion": max(0.0, 0.9 - 0.1 * gap), "lift": 0.5 + 0.001 * info[
            "polish_steps"], "agree_unchanged": 1.0, "score_flops": 1e3, "start": start, **info}

    return score


def test_lr_sweep_picks_the_planted_best_rate_for_every_start_alike(pair, teacher):
    """Both starts try every rate of the grid once; the trial at the planted best rate goes on (not the first start
    listed: its criterion ties, and the lift, a held-out measure, decides), and every later round keeps that rate."""
    _, recipient, _ = pair
    prompts, answers, changed = teacher
    starts = {"a": fresh_adapter(recipient, [1], rank=2, seed=1), "b": fresh_adapter(recipient, [1], rank=2, seed=2)}
    plan = PolishPlan(budget=1e15, score_cost=1e3, max_steps=12, lrs=(1e-3, 4e-3, 1.6e-2), round_steps=2, patience=2)
    lift_of = {"a": 0.0, "b": 0.01}  # b's held-out lift is higher: b must win the tie whatever the order

    def make(start, lr):
        return Distillation(recipient, start, prompts, answers, changed, batch_size=4, lr=lr)

    for order in (("a", "b"), ("b", "a")):
        planted = _planted_scorer(4e-3, recipient)
        score = lambda s, c, a, i: planted(s, c, a, i) | {"lift": 0.5 + lift_of[s]}  # noqa: E731
        out = race({k: starts[k] for k in order}, make, score, plan)
        trials = [r for r in out.rows.values() if r["polish_steps"] == 2]
        assert sorted((r["start"], r["polish_lr"]) for r in trials) == sorted(
            (s, lr) for s in "ab" for lr in plan.lrs)
        assert out.winner == "b+polish/2/lr=0.004"
        assert rank(pd.DataFrame(trials)).iloc[0].candidate == out.winner  # the search's one ranking rule
        later = [r for r in out.rows.values() if r["polish_steps"] > 2]
        assert later and all(r["start"] == "b" and r["polish_lr"] == 4e-3 for r in later)
        assert len(later) == plan.patience  # no round improved on the trial (same criterion, lift +0.002 per round)


@pytest.mark.parametrize("improves_at_high, lift_at_high, rates_tried", [
    (True, 0.5, (1.6e-2,)), (False, 0.5, (1.6e-2, 4e-3)),
    (False, 0.6, (1.6e-2, 4e-3)),  # a higher lift alone does not keep the rate
])
def test_a_lower_rate_is_tried_only_when_no_trial_raised_its_start_criterion(pair, teacher, improves_at_high,
                                                                              lift_at_high, rates_tried):
    """With origins, the rates go in order and the sweep stops at the first one where some start's trial raises the
    criterion above its origin's (planted criteria: a's origin 0.6, b's 0.5); where neither does at 1.6e-2, both
    starts try 4e-3 too, even when b's lift rose there. An origin per start is required."""
    _, recipient, _ = pair
    prompts, answers, changed = teacher
    starts = {"a": fresh_adapter(recipient, [1], rank=2, seed=1), "b": fresh_adapter(recipient, [1], rank=2, seed=2)}
    origins = {"a": {"criterion": 0.6, "lift": 0.5, "agree_unchanged": 1.0},
               "b": {"criterion": 0.5, "lift": 0.5, "agree_unchanged": 1.0}}
    high = {"a": 0.55, "b": 0.7 if improves_at_high else 0.5}  # b's trial at 1.6e-2 beats its origin, or ties it

    def score(start, candidate, adapter, info):
        crit = high[start] if info["polish_lr"] == 1.6e-2 else 0.65
        lift = lift_at_high if info["polish_lr"] == 1.6e-2 else 0.5
        return {"candidate": candidate, "criterion": crit, "lift": lift, "agree_unchanged": 1.0, "score_flops": 1e3,
                "start": start, **info}

    def make(start, lr):
        return Distillation(recipient, start, prompts, answers, changed, batch_size=4, lr=lr)

    plan = PolishPlan(budget=1e15, score_cost=1e3, max_steps=4, lrs=(1.6e-2, 4e-3), round_steps=2, patience=1)
    out = race(starts, make, score, plan, origins)
    trials = sorted((r["start"], r["polish_lr"]) for r in out.rows.values() if r["polish_steps"] == 2)
    assert trials == sorted((s, lr) for s in "ab" for lr in rates_tried)
    everything = race(starts, make, score, plan)  # no origins: every rate, as transfers saved before them ran
    assert len([r for r in everything.rows.values() if r["polish_steps"] == 2]) == 4
    with pytest.raises(ValueError, match="one row per start"):
        race(starts, make, score, plan, {"a": origins["a"]})


def test_a_winner_stuck_at_the_floor_hands_the_budget_to_the_other_start(pair, teacher):
    """Planted: start a's trials score exactly the unedited recipient's criterion (0.5) and win the first round on
    the lift; b's trial ties at 0.5 and then improves round after round. With the floor at 0.5, a stalls after its
    patience and b goes on (its later rounds beat 0.5); with no floor, b never trains past its trial."""
    _, recipient, _ = pair
    prompts, answers, changed = teacher
    starts = {"a": fresh_adapter(recipient, [1], rank=2, seed=1), "b": fresh_adapter(recipient, [1], rank=2, seed=2)}

    def score(start, candidate, adapter, info):
        crit = 0.5 if start == "a" or info["polish_steps"] <= 2 else min(1.0, 0.5 + 0.1 * info["polish_steps"] / 2)
        return {"candidate": candidate, "criterion": crit, "lift": 0.6 if start == "a" else 0.55,
                "agree_unchanged": 1.0, "score_flops": 1e3, "start": start, **info}

    def make(start, lr):
        return Distillation(recipient, start, prompts, answers, changed, batch_size=4, lr=lr)

    for floor, second in ((0.5, True), (float("-inf"), False)):
        plan = PolishPlan(budget=1e15, score_cost=1e3, max_steps=12, lrs=(4e-3,), round_steps=2, patience=2,
                          floor=floor)
        out = race(starts, make, score, plan)
        assert out.winner == "a+polish/2/lr=0.004"
        b_later = [r for r in out.rows.values() if r["start"] == "b" and r["polish_steps"] > 2]
        assert bool(b_later) == second and (out.second == "b+polish/2/lr=0.004") == second
        if second:
            assert max(r["criterion"] for r in b_later) > 0.5
            assert rank(pd.DataFrame(list(out.rows.values()))).iloc[0].start == "b"
    with pytest.raises(ValueError, match="floor"):
        PolishPlan(budget=1.0, score_cost=0.0, floor=float("nan"))


def test_polish_stops_at_its_budget_and_counts_every_flop(pair, teacher):
    """A budget of a few steps: the training and scoring FLOPs counted stay within it, a larger budget runs more
    steps, and the same seed gives the same rounds (deterministic)."""
    _, recipient, _ = pair
    prompts, answers, changed = teacher
    start = fresh_adapter(recipient, [1], rank=2, seed=1)
    probe = Distillation(recipient, start, prompts, answers, changed, batch_size=4)
    step, score_cost = probe.expected_step_flops(), 0.5 * probe.expected_step_flops()

    def run(budget: float):
        plan = PolishPlan(budget=budget, score_cost=score_cost, max_steps=64, lrs=(4e-3,), round_steps=3, patience=50)

        def score(s, c, a, info):
            return {"candidate": c, "criterion": 0.5, "lift": 0.5 + info["polish_steps"], "score_flops": score_cost,
                    **info}

        return race({"a": start}, lambda a, lr: Distillation(recipient, a, prompts, answers, changed,
                                                             batch_size=4, lr=lr), score, plan)

    small, large = run(10 * step), run(20 * step)
    for out, budget in ((small, 10 * step), (large, 20 * step)):
        assert 0 < out.flops <= budget
        assert out.train_flops == pytest.approx(sum(r["fit_flops"] for r in out.rows.values()))
        assert out.score_flops == pytest.approx(score_cost * len(out.rows))
    steps = lambda out: max(r["polish_steps"] for r in out.rows.values())  # noqa: E731
    assert steps(large) > steps(small) >= 3
    again = run(10 * step)
    assert list(again.rounds) == list(small.rounds)
    for name in small.rounds:
        for layer, iv in small.rounds[name].interventions.items():
            for k, v in iv.state_dict().items():
                torch.testing.assert_close(again.rounds[name].interventions[layer].state_dict()[k], v)
    nothing = run(0.4 * step)  # not even the first round's scoring fits
    assert nothing.rounds == {} and nothing.flops == 0


def test_finetune_estimate_is_four_params_tokens_of_the_zoo_recipe(pair, teacher):
    _, recipient, _ = pair
    prompts, answers, _ = teacher
    n = sum(p.numel() for p in recipient.torch_module.parameters())
    tokens = [len(recipient.tokenizer(p + " " + a)["input_ids"]) for p, a in zip(prompts, answers)]
    assert finetune_flops_estimate(recipient, prompts, answers) == pytest.approx(
        4.0 * n * 400 * 32 * sum(tokens) / len(tokens))


def test_transfer_polish_stays_within_polish_budget(pair):
    """cv.transfer's polish (here the distillation baseline, which always trains) spends at most ``polish_budget``
    × the estimated finetune's FLOPs on its rounds' training and scoring, and a larger budget trains more."""
    donor, recipient, adapter = pair
    prompts = random_prompts(48, seed=12)
    spent = {}
    for budget in (0.01, 0.03):
        t = cv.transfer(donor, recipient, adapter, prompts, start="scratch", polish_budget=budget, seed=1,
                        progress=False)
        rounds = t.candidates[t.candidates.stage == 3]
        assert len(rounds) >= 1 and rounds.polish_budget_flops.nunique() == 1
        used = float(rounds.fit_flops.sum() + rounds.score_flops.sum())
        assert 0 < used <= float(rounds.polish_budget_flops.iloc[0])
        spent[budget] = (used, int(rounds.polish_steps.max()))
    assert spent[0.03][1] > spent[0.01][1]
    with pytest.raises(ValueError, match="polish_budget is a share"):
        cv.transfer(donor, recipient, adapter, prompts, polish_budget=0.0, progress=False)
    with pytest.raises(ValueError, match="polish_budget=1e-05 pays for no training round"):
        cv.transfer(donor, recipient, adapter, prompts, start="scratch", polish_budget=1e-5, progress=False)
