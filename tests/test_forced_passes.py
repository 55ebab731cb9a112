"""pipeline/forced_passes.py and access/prefix.py: a teacher-forced pass from the prompts' cached prefix states gives
the whole sequence's logits at the same positions (every family the access layer supports, with a last-token edit
acting), the same scores and the same training gradients; the states are left as they were and no hook remains;
where no prefix can be kept (the TransformerLens backend, an edit active at setup) every pass is whole."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, assert_close, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.access import token_flops
from commandv_interp.pipeline.candidates import native_deltas
from commandv_interp.pipeline.agreement import at_prompt_end, score_responses, targets_from
from commandv_interp.pipeline.forced_passes import ForcedPasses
from commandv_interp.pipeline.polish import Distillation
from commandv_interp.zoo.generated.architectures import FAMILIES, ModelPlan, build_config

RESPONSES = ["w5 w6 w7", "w8", "w9 w10 w11 w12 w13", "w14 w15", "w16 w17 w18 w19", "w20"]


def _family_model(family: str, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    config = build_config(ModelPlan("donor", family, 3, 32, "word", "same-family"), len(VOCAB), 64)
    return cv.open_model(AutoModelForCausalLM.from_config(config).eval(), tokenizer=tokenizer, name=family)


def _logits_both_ways(access, prompts, responses, adapter):
    """Logits at each row's response positions (its last prompt token on), whole and from the prefix states."""
    rows = list(range(len(prompts)))
    out = []
    for cache in (False, True):
        passes = ForcedPasses(access, prompts, cache=cache)
        assert passes.cached is cache
        batch, prompt_lens, lengths = passes.sequences(rows, responses)
        per_layer = native_deltas(access, adapter)
        with torch.no_grad(), access.edited(at_prompt_end(per_layer, prompt_lens, 1.0)):
            logits = passes.logits(rows, batch)
        out.append([logits[i, p - 1:n] for i, (p, n) in enumerate(zip(prompt_lens, lengths))])
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pass_from_prefix_states_equals_the_whole_pass(family, hf_llama):
    access = _family_model(family, hf_llama[1])
    adapter = random_adapter(access.d_model, layers=(1,), scale=1.0, seed=3)
    prompts = random_prompts(len(RESPONSES), seed=2)
    whole, cached = _logits_both_ways(access, prompts, RESPONSES, adapter)
    for a, b in zip(cached, whole):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_scores_and_gradients_are_those_of_whole_passes(nn_llama):
    prompts = random_prompts(12, seed=4)
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.8, seed=5)
    targets = targets_from(prompts, RESPONSES * 2, [r + " w30" for r in RESPONSES] * 2)
    deltas = native_deltas(nn_llama, adapter)
    cached = ForcedPasses(nn_llama, targets.prompts)
    a = score_responses(nn_llama, targets, deltas, 1.0, batch_size=5, foil=True, passes=cached)
    b = score_responses(nn_llama, targets, deltas, 1.0, batch_size=5, foil=True)
    assert_close(a.target_loglik, b.target_loglik, atol=1e-4, rtol=1e-5)
    assert_close(a.foil_loglik, b.foil_loglik, atol=1e-4, rtol=1e-5)
    assert torch.equal(a.agreement, b.agreement)
    # the prefix states once, then each (row, response)'s states through block 0 (the lowest edited) once; every
    # pass runs the blocks above block 0 only
    suffixes = [cached.sequences(range(12), list(texts)) for texts in (targets.target, targets.foil)]
    suffix_tokens = sum(int(batch.attention_mask.sum()) for batch, _, _ in suffixes)
    assert cached.state_flops == pytest.approx(token_flops(nn_llama, sum(
        len(ids) - 1 for ids in nn_llama.tokenizer(list(targets.prompts))["input_ids"]))
        + token_flops(nn_llama, suffix_tokens, through_layer=0))
    assert cached.pass_flops == pytest.approx(token_flops(nn_llama, suffix_tokens, after_layer=0))

    grads = []
    for passes in (ForcedPasses(nn_llama, prompts), None):
        trainer = Distillation(nn_llama, adapter, prompts, RESPONSES * 2, batch_size=6, seed=1, passes=passes)
        loss = trainer._loss(*trainer._next_batch())
        loss.backward()
        grads.append((float(loss.detach()), [p.grad for iv in trainer._interventions.values()
                                             for p in iv.parameters()]))
        nn_llama.torch_module.zero_grad(set_to_none=True)
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert [g is None for g in grads[0][1]] == [g is None for g in grads[1][1]]
    assert sum(g is not None for g in grads[0][1]) >= 2  # both factors of each intervention learn
    for g_cached, g_whole in zip(grads[0][1], grads[1][1]):
        if g_cached is not None:
            assert_close(g_cached, g_whole, atol=1e-5, rtol=1e-4)


def test_a_pass_starting_above_the_unedited_blocks_equals_the_whole_pass(nn_llama, nn_gpt2):
    """Edits at blocks 1 and 2: the pass replays block 1's output taken once without edits (blocks 0 and 1 do not
    run), with the same logits and gradients as a whole pass; what it counts is what it runs, the states taken once
    per (row, response); the blocks' own forward is back afterwards, also after an error."""
    for access in (nn_llama, nn_gpt2):
        prompts = random_prompts(5, seed=11)
        adapter = random_adapter(access.d_model, layers=(1, 2), scale=1.0, seed=4)
        whole, cached = _logits_both_ways(access, prompts, RESPONSES[:5], adapter)
        for a, b in zip(cached, whole):
            assert_close(a, b, atol=1e-5, rtol=1e-5)
        blocks = access.torch_module.get_submodule(access._block_path)
        own = [block.__dict__.get("forward") for block in blocks]  # nnsight may set its own
        calls = []
        handles = [block.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, block in enumerate(blocks)]
        passes = ForcedPasses(access, prompts)
        batch, prompt_lens, _ = passes.sequences(range(5), RESPONSES[:5])
        edits = at_prompt_end(native_deltas(access, adapter), prompt_lens, 1.0)
        try:
            with torch.no_grad(), access.edited(edits):
                passes.logits(range(5), batch)  # prefix states, the start states, then the pass
                calls.clear()
                passes.logits(range(5), batch)
        finally:
            for handle in handles:
                handle.remove()
        assert calls == list(range(len(blocks)))  # every block is called (hooks run), the lower ones replayed
        tokens = int(batch.attention_mask.sum())
        prefix = sum(len(ids) - 1 for ids in access.tokenizer(prompts)["input_ids"])
        assert passes.state_flops == pytest.approx(token_flops(access, prefix) + token_flops(access, tokens, 1))
        assert passes.pass_flops == pytest.approx(2 * token_flops(access, tokens, after_layer=1))
        assert [block.__dict__.get("forward") for block in blocks] == own
        with pytest.raises(ValueError, match="edit acts below block 2"):
            with access.edited(edits):
                rows = list(range(5))
                access.forward_suffix(passes._states, rows, batch, start=(2, passes._start_states(
                    passes._start_keys(rows, batch, 2), rows, batch, 2)))
        assert [block.__dict__.get("forward") for block in blocks] == own
        with pytest.raises(ValueError, match="same suffixes"):  # states of other suffixes: refused, and restored
            access.forward_suffix(passes._states, range(5), batch, start=(1, torch.zeros(5, 1, access.d_model)))
        assert [block.__dict__.get("forward") for block in blocks] == own


def test_token_flops_after_a_block_count_the_blocks_above_and_the_head(nn_llama, nn_gpt2):
    for access in (nn_llama, nn_gpt2):
        module = access.torch_module
        blocks = module.get_submodule(access._block_path)
        total = sum(p.numel() for p in module.parameters())
        embed, head = module.get_input_embeddings(), module.get_output_embeddings()
        untied_embed = 0 if head.weight is embed.weight else embed.weight.numel()
        for layer in range(access.n_layers):
            below = sum(p.numel() for b in list(blocks)[:layer + 1] for p in b.parameters())
            assert token_flops(access, 3, after_layer=layer) == 2 * 3 * (total - below - untied_embed)
        with pytest.raises(ValueError, match="out of range"):
            token_flops(access, 1, after_layer=access.n_layers)
        with pytest.raises(ValueError, match="not both"):
            token_flops(access, 1, through_layer=0, after_layer=0)


def test_prefix_states_are_left_as_they_were_and_no_hook_remains(nn_llama):
    prompts = random_prompts(4, seed=9)
    blocks = nn_llama.torch_module.get_submodule("model.layers")
    hooks_before = [dict(block._forward_hooks) for block in blocks]  # nnsight may keep hooks of its own
    passes = ForcedPasses(nn_llama, prompts)
    batch, prompt_lens, _ = passes.sequences(range(4), RESPONSES[:4])
    adapter = random_adapter(nn_llama.d_model, layers=(1,), scale=1.0, seed=2)
    with nn_llama.edited(at_prompt_end(native_deltas(nn_llama, adapter), prompt_lens, 1.0)):
        first = passes.logits(range(4), batch)
        keys = [k.clone() for k in passes._states.keys[0]]
        again = passes.logits(range(4), batch)
    assert torch.equal(first, again)
    assert all(torch.equal(k, kept) for k, kept in zip(keys, passes._states.keys[0]))
    assert [dict(block._forward_hooks) for block in blocks] == hooks_before
    plain = nn_llama.forward(batch)  # no edit outside the block: the suffix pass left nothing behind
    with nn_llama.edited({}):
        assert torch.equal(nn_llama.forward(batch), plain)


def test_whole_passes_where_no_prefix_is_kept(tl_llama, nn_llama):
    prompts = random_prompts(3, seed=1)
    assert not ForcedPasses(tl_llama, prompts).cached  # the TransformerLens backend keeps no prefix states
    with pytest.raises(NotImplementedError, match="no prefix states"):
        tl_llama.prefix_states([[1, 5]])
    adapter = random_adapter(nn_llama.d_model, layers=(1,), seed=0)
    with nn_llama.edited(at_prompt_end(native_deltas(nn_llama, adapter), [3, 3, 3], 1.0)):
        assert not ForcedPasses(nn_llama, prompts).cached  # an edit active at setup may act before the last token
    passes = ForcedPasses(nn_llama, prompts, cache=False)
    assert passes.pending_flops() == 0.0
    batch, prompt_lens, lengths = passes.sequences(range(3), RESPONSES[:3])
    assert prompt_lens == [len(ids) for ids in nn_llama.tokenizer(prompts)["input_ids"]]


def _continuations(prompts):
    """Each prompt, then each followed by one and by two more words (as the transfer's onset rows), interleaved; a
    prompt alone, and an empty one (its BOS token only: no prefix, read whole)."""
    return [t for i, p in enumerate(prompts) for t in (p, f"{p} w{20 + i}", f"{p} w{30 + i} w7")] + ["w9", ""]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_profile_sharing_prefixes_equals_the_whole_profile(family, hf_llama):
    access = _family_model(family, hf_llama[1])
    texts = _continuations(random_prompts(5, seed=6))
    layers = [0, 1] if family != "gpt2" else [2]  # reads that stop before the last of the 3 blocks, and one through it
    whole = cv.profile(access, texts, layers=layers, batch_size=4, progress=False)
    shared = cv.profile(access, texts, layers=layers, batch_size=4, progress=False, share_prefixes=True)
    assert shared.prompts_fingerprint == whole.prompts_fingerprint
    for layer in layers:
        assert_close(shared[layer], whole[layer], atol=1e-5, rtol=1e-5)


def test_profile_tokens_count_what_the_shared_profile_runs(nn_llama, tl_llama):
    from commandv_interp.access.prefix import continuation_roots, shared_prefix_tokens
    from commandv_interp.profiles import profile_tokens

    prompts = random_prompts(4, seed=8)
    texts = _continuations(prompts)
    ids = nn_llama.tokenizer(texts)["input_ids"]
    assert continuation_roots(ids)[:3] == [0, 0, 0] and continuation_roots(ids)[-2:] == [len(texts) - 2, -1]
    assert continuation_roots([[5], [5, 6]]) == [-1, 1]  # a text of one token has no prefix: run whole
    p_lens = [len(i) for i in nn_llama.tokenizer(prompts)["input_ids"]]
    # each prompt's prefix once; the prompt's own last token, then 2 and 3 tokens for its continuations; "w9" alone
    assert shared_prefix_tokens(ids) == sum(n - 1 for n in p_lens) + len(prompts) * (1 + 2 + 3) + 2 + 1
    assert profile_tokens(nn_llama, texts, share_prefixes=True) == shared_prefix_tokens(ids)
    assert profile_tokens(nn_llama, texts) == sum(len(i) for i in ids)
    assert profile_tokens(tl_llama, texts, share_prefixes=True) == sum(len(i) for i in ids)  # keeps no states
    with nn_llama.edited({0: lambda h, ctx: h + 1.0}):  # an edit active: whole passes, and the profile reads it
        assert profile_tokens(nn_llama, texts, share_prefixes=True) == sum(len(i) for i in ids)
        edited = cv.profile(nn_llama, texts, layers=[1], progress=False, share_prefixes=True)
    assert not torch.allclose(edited[1], cv.profile(nn_llama, texts, layers=[1], progress=False)[1])
    with pytest.raises(ValueError, match="no edit active"):
        with nn_llama.edited({0: lambda h, ctx: h}):
            states = nn_llama.prefix_states([ids[0][:-1]], through_layer=1)
            nn_llama.read_suffix(states, [0], cv.access.Batch.right_padded([ids[0][-1:]], 0), [1])
    states = nn_llama.prefix_states([ids[0][:-1]], through_layer=0)
    with pytest.raises(ValueError, match="through_layer=1"):
        nn_llama.read_suffix(states, [0], cv.access.Batch.right_padded([ids[0][-1:]], 0), [1])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_generation_from_prefix_states_equals_the_whole_generation(family, hf_llama):
    """20 greedy tokens from the prompts' cached states (the last prompt token run first) equal a whole generation's,
    plain and with a last-token adapter that changes them."""
    from commandv_interp.adapters.edits import adapter_edits

    access = _family_model(family, hf_llama[1])
    prompts = random_prompts(6, seed=2)
    ids = [list(x) for x in access.tokenizer(prompts)["input_ids"]]
    states = access.prefix_states([x[:-1] for x in ids])
    adapter = random_adapter(access.d_model, layers=(1,), scale=3.0, seed=3)
    out = []
    for edits in ({}, adapter_edits(access, adapter)):
        with access.edited(edits):
            whole = access.generate_ids(access.encode(prompts), max_new_tokens=20)
            assert torch.equal(access.generate_suffix(states, range(6), ids, 20), whole)
        out.append(whole)
    assert not torch.equal(*out)  # the adapter moves the generations: its hook acted on the cached path too


def test_generate_suffix_refuses_what_it_cannot_start_from_the_last_token(nn_llama):
    ids = [list(x) for x in nn_llama.tokenizer(random_prompts(2, seed=3))["input_ids"]]
    states = nn_llama.prefix_states([x[:-1] for x in ids])
    with pytest.raises(ValueError, match="its prefix row's tokens plus one"):
        nn_llama.generate_suffix(states, [0, 1], [ids[0], ids[1] + [5]], 4)
    with nn_llama.edited({0: lambda h, ctx: h}):  # an edit function without acts_on_decode acts on decode steps
        with pytest.raises(ValueError, match="acts on decode steps"):
            nn_llama.generate_suffix(states, [0, 1], ids, 4)


def test_replayed_blocks_keep_a_tuple_output_and_run_only_the_blocks_above():
    """Blocks that return tuples (as some transformers versions' do): the replayed block returns the given states in
    that structure, the blocks below it never run their own forward, and every forward is back afterwards."""
    from commandv_interp.access.prefix import replayed_blocks

    runs = []

    class Block(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i, self.lin = i, torch.nn.Linear(4, 4)

        def forward(self, hidden, attention_mask=None):
            runs.append(self.i)
            return (hidden + self.lin(hidden), None)

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([Block(i) for i in range(4)])

    def model(x):
        for block in blocks:
            x = block(x, attention_mask=None)[0]
        return x

    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        at_1 = blocks[1](blocks[0](x)[0])[0]
        whole = model(x)
        runs.clear()
        with replayed_blocks(blocks, 1, at_1, (None, None)):
            replayed = model(torch.zeros_like(x))  # what enters below the replayed block does not matter
        assert runs == [2, 3] and torch.equal(replayed, whole)
        runs.clear()
        assert torch.equal(model(x), whole) and runs == [0, 1, 2, 3]  # every block runs again
        with pytest.raises(ValueError, match="same suffixes"):
            with replayed_blocks(blocks, 2, torch.zeros(2, 5, 4), (None, None)):
                model(x)
        assert all("forward" not in block.__dict__ for block in blocks)
        with pytest.raises(ValueError, match="out of range"):
            with replayed_blocks(blocks, 4, at_1, (None, None)):
                pass
