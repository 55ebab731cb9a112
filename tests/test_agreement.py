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
