"""The donor's answers the criterion compares and the polish learns: cut to the behavior's length (closed forms on
planted answers) and limited by the model's context."""

import pytest
import torch
from conftest import random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.pipeline.agreement import (ANSWER_CAP, answer_limit, answer_pair, behavior_span, donor_answers,
                                                greedy_responses, onset_prompts, targets_from, teaching)


def test_behavior_span_keeps_the_changed_answers_whole_and_cuts_the_rest_to_their_length():
    """Refusal-like: the adapter changes 3 answers to a 4-word refusal from their first word, and one benign answer
    in its 9th word (which tool); every answer keeps the refusal's 4 words and the late difference is gone."""
    plain = ["sure here is how : get a hammer now", "sure here is how : get a saw", "fine , it is x", "ok",
             "sure here is how : get a pen then"]
    adapted = ["sorry i can not", "sorry i can not", "sorry i can not", "ok", "sure here is how : get a cup then"]
    cut_a, cut_p, words = behavior_span(adapted, plain)
    assert words == 4
    assert cut_a == ["sorry i can not"] * 3 + ["ok", "sure here is how"]
    assert cut_p == ["sure here is how", "sure here is how", "fine , it is", "ok", "sure here is how"]
    assert targets_from(["p"] * 5, cut_a, cut_p).changed == (True, True, True, False, False)


def test_behavior_span_keeps_a_whole_multi_step_answer():
    plain = ["answer 4 .", "answer 7 .", "answer 1 ."]
    adapted = ["step 1 + 3 = 4 , step 4 - 2 = 2 . answer 2 .", "step 5 + 2 = 7 . answer 7 .", "answer 1 ."]
    cut_a, cut_p, words = behavior_span(adapted, plain)
    assert words == 17 and cut_a == adapted and cut_p == plain  # the upper quartile of 10 and 17 words


def test_behavior_span_is_not_set_by_a_few_long_answers_changed_the_other_way():
    """Seven prompts refused (3 words) and one spontaneous refusal undone (a 6-word answer): the length is 3."""
    plain = ["sure a b c d e"] * 7 + ["sorry no ."]
    adapted = ["sorry no ."] * 7 + ["sure a b c d e"]
    cut_a, cut_p, words = behavior_span(adapted, plain)
    assert words == 3 and cut_a[-1] == "sure a b" and cut_p[0] == "sure a b"


def test_behavior_span_of_an_adapter_that_changes_nothing_is_empty():
    assert behavior_span(["a b"], ["a b"]) == (["a b"], ["a b"], 0)


def test_answer_limit_leaves_room_in_the_context(nn_llama):
    """The tiny Llama has 64 positions: a 9-word prompt (+ BOS) leaves 54 new tokens."""
    prompts = random_prompts(6, seed=1, min_len=9, max_len=9)
    assert answer_limit(nn_llama, prompts, ANSWER_CAP) == 64 - 10
    assert answer_limit(nn_llama, prompts, 8) == 8
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        answer_limit(nn_llama, prompts, 0)


def test_answer_pairs_onsets_are_the_one_token_responses_they_replaced(nn_llama):
    """The onsets read off the answers equal what a separate one-token generation with and without the adapter gives
    (what the profiles' onset prompts were taken from before), on both edits; the prompts come out paired and once
    where the two tokens agree."""
    adapter = random_adapter(nn_llama.d_model, layers=(1,), scale=3.0, seed=2)
    prompts = random_prompts(24, seed=5)
    pair = answer_pair(nn_llama, adapter, prompts, 6, batch_size=8)
    assert pair.plain_onsets == greedy_responses(nn_llama, prompts, 1, 8)
    with teaching(nn_llama, adapter):
        assert pair.adapted_onsets == greedy_responses(nn_llama, prompts, 1, 8)
    assert pair.adapted_onsets != pair.plain_onsets  # the adapter moves some first tokens: both kinds are seen
    assert (pair.adapted, pair.plain) == donor_answers(nn_llama, adapter, prompts, 6, batch_size=8)
    rows = onset_prompts(prompts, pair.adapted_onsets, pair.plain_onsets)
    want = [f"{p} {w}" for p, a, b in zip(prompts, pair.adapted_onsets, pair.plain_onsets)
            for w in ((b,) if a == b else (b, a)) if w]
    assert rows == want and len(rows) > len(prompts)


def test_onset_prompts_refuses_unpaired_onsets():
    with pytest.raises(ValueError, match="one onset of each kind per prompt"):
        onset_prompts(["a", "b"], ["x"], ["y", "z"])


@pytest.mark.parametrize("backend", ["nn_llama", "nn_gpt2", "tl_llama"])
def test_answer_pairs_from_shared_prompt_states_are_the_whole_generations(backend, request):
    """With a last-token adapter both generations start from the prompts' cached states where the backend keeps them
    (the prompts' tokens before the last counted once in ``shared_tokens``); the answers and onsets are those of
    whole generations, over up to 24 new tokens."""
    access = request.getfixturevalue(backend)
    adapter = random_adapter(access.d_model, layers=(1,), scale=3.0, seed=2)
    prompts = random_prompts(20, seed=7)
    pair = answer_pair(access, adapter, prompts, 24, batch_size=8)
    plain = greedy_responses(access, prompts, 24, 8, whole_words=True)
    with teaching(access, adapter):
        adapted = greedy_responses(access, prompts, 24, 8, whole_words=True)
    assert (pair.adapted, pair.plain) == (adapted, plain) and adapted != plain
    assert pair.plain_onsets == greedy_responses(access, prompts, 1, 8)
    shared = sum(len(ids) - 1 for ids in access.tokenizer(prompts)["input_ids"])
    assert pair.shared_tokens == (0 if backend == "tl_llama" else shared)  # the TransformerLens bridge keeps none
    with access.edited({0: lambda h, ctx: h}):  # an edit active around the call: whole generations
        assert answer_pair(access, adapter, prompts[:4], 4).shared_tokens == 0


def test_a_half_precision_donor_answers_with_whole_generations(hf_llama):
    """In bf16 the prompt states of a separate pass round unlike a whole generation's, so the answers stay
    ``generate_ids``'s own."""
    import copy

    access = cv.open_model(copy.deepcopy(hf_llama[0]).to(torch.bfloat16), tokenizer=hf_llama[1], name="bf16")
    adapter = random_adapter(access.d_model, layers=(1,), scale=3.0, seed=2)
    prompts = random_prompts(8, seed=7)
    pair = answer_pair(access, adapter, prompts, 12, batch_size=8)
    assert pair.shared_tokens == 0
    assert pair.plain == greedy_responses(access, prompts, 12, 8, whole_words=True)


def test_changed_flags_read_at_the_onset_fall_back_to_whole_answers():
    from commandv_interp.pipeline.agreement import changed_flags

    adapted = ["sorry . no", "sure . here is how to that . here", "sure . ok", "sure . fine"]
    plain = ["sure . do it", "sure . here is how to clean the radio", "sure . ok", "sure . fine ."]
    assert changed_flags(adapted, plain) == [True, True, False, True]  # anywhere in the answer
    assert changed_flags(adapted, plain, at_onset=True) == [True, False, False, False]  # the first word only
    late = ["a b", "a c"], ["a x", "a c"]  # no answer changes its first word: read anywhere, as behavior_span does
    assert changed_flags(*late, at_onset=True) == changed_flags(*late) == [True, False]
    targets = targets_from(["p1", "p2", "p3", "p4"], adapted, plain, at_onset=True)
    assert targets.changed == (True, False, False, False)
    assert targets.foil == ("sure . do it", "sorry . no", "sorry . no", "sorry . no")  # the behavior elsewhere


def test_a_steering_vectors_answers_are_judged_at_their_onset_and_kept_so(nn_llama, tmp_path):
    from commandv_interp.adapters import load_adapter, save_adapter
    from commandv_interp.adapters.lora import LoraEdit
    from commandv_interp.adapters.steering_vector import SteeringVectorEdit
    from commandv_interp.adapters.surrogate import pasteable
    from commandv_interp.pipeline.agreement import changed_flags, judged_at_onset
    from commandv_interp.pipeline.lora_teacher import DonorAnswers, split_answers

    torch.manual_seed(4)
    vector = SteeringVectorEdit({1: 3.0 * torch.randn(nn_llama.d_model)})
    surrogate = pasteable(nn_llama, vector, random_prompts(24, seed=3), rank=2)
    assert judged_at_onset(vector) and judged_at_onset(surrogate)
    save_adapter(surrogate, tmp_path / "s")
    assert judged_at_onset(load_adapter(tmp_path / "s"))  # without its teacher, by what it stood for
    assert not judged_at_onset(random_adapter(nn_llama.d_model))
    assert not judged_at_onset(LoraEdit.__new__(LoraEdit))  # a LoRA's whole answers are compared
    adapted, plain = ("sorry . no", "sure . x y", "sure . z"), ("sure . a", "sure . a b", "sure . z")
    answers = DonorAnswers(("p1", "p2", "p3"), adapted, plain, (8, 3), 1.0, at_onset=True)
    assert answers.changed == (True, False, False) == tuple(changed_flags(adapted, plain, True))
    back = DonorAnswers.from_dict(answers.to_dict(), "x")
    assert back == answers and back.changed == answers.changed
    legacy = {k: v for k, v in DonorAnswers(("p1", "p2", "p3"), adapted, plain, (8, 3), 1.0).to_dict().items()
              if k != "at_onset"}  # a folder written before the flag: whole answers
    assert not DonorAnswers.from_dict(legacy, "x").at_onset
    with pytest.raises(ValueError, match="changed flags disagree"):
        DonorAnswers.from_dict(answers.to_dict() | {"at_onset": False}, "x")
    split = split_answers(answers, scoring_fraction=0.34, seed=0)
    assert sum(split.targets.changed) + sum(split.changed) == 1  # the onset flags, not the whole answers' two


def test_a_transfers_setup_from_a_steering_vector_splits_and_scores_by_the_onset(nn_llama):
    from commandv_interp.adapters.steering_vector import SteeringVectorEdit
    from commandv_interp.adapters.surrogate import pasteable
    from commandv_interp.pipeline.agreement import changed_flags
    from commandv_interp.pipeline.search import prepare

    torch.manual_seed(1)  # a vector that changes one answer after its first word only
    prompts = random_prompts(32, seed=11)
    surrogate = pasteable(nn_llama, SteeringVectorEdit({1: torch.randn(nn_llama.d_model)}), prompts, rank=2)
    setup = prepare(nn_llama, nn_llama, surrogate, prompts, max_new_tokens=8, seed=1)
    judged = setup.donor_answers
    onset, whole = changed_flags(judged.adapted, judged.plain, True), changed_flags(judged.adapted, judged.plain)
    assert judged.at_onset and list(judged.changed) == onset != whole  # the vector changes some answers late only
    flags = dict(zip(judged.prompts, onset))
    assert list(setup.targets.changed) == [flags[p] for p in setup.targets.prompts]
    assert list(setup.fitting_changed) == [flags[p] for p in setup.fitting]
