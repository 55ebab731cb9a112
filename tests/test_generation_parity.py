"""Greedy generation: both backends generate what Hugging Face ``generate`` generates, token for token.

Ground truth: each prompt generated *alone, unpadded* by a plain Hugging Face model (its own checkpoint, default
attention, KV cache on) whose blocks carry the same edit functions through plain torch forward hooks, called as a
cached ``generate`` calls them (step 0 on the prompt pass, step ``k`` on the ``k``-th new token). Both backends
generate left- and right-padded batches of the same prompts through the public ``generate``; the new token ids
it produces must equal the ground truth up to and including EOS, and be padding after it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch

from conftest import VOCAB, _save_tokenizer, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.access import Batch, EditContext, ModelAccess
from commandv_interp.access.blocks import find_block_path, rewrap_block_output, unwrap_block_output

N_NEW = 24  # new tokens per prompt (a zoo step-by-step answer is about 33 word tokens)
MIN_LONG = 16  # every condition must have a row that generates at least this many tokens before EOS
CONDITIONS = ("none", "paste", "native")
SIDES = ("left", "right")
ZOO_DONOR = {"llama-6x128": "gpt2-4x96", "gpt2-4x96": "qwen2-5x160", "qwen2-5x160": "llama-6x128"}


# -- the ground truth ------------------------------------------------------------------------------------------------
def hf_greedy(model: torch.nn.Module, batch: Batch, edits: dict, n_new: int, pad_id: int) -> torch.Tensor:
    """New token ids of Hugging Face's cached greedy ``generate``, with ``edits`` as plain forward hooks on the
    blocks (decode calls skipped where ``acts_on_decode`` is False, as the contract allows)."""
    blocks = model.get_submodule(find_block_path(model))
    passes = [0]

    def block_hook(layer, fn):
        def hook(module, args, output):
            step = passes[0]
            if step > 0 and not getattr(fn, "acts_on_decode", True):
                return output
            hidden = fn(unwrap_block_output(output), EditContext(layer=layer, step=step,
                                                                  prompt_mask=batch.attention_mask))
            return rewrap_block_output(output, hidden)
        return hook

    handles = [blocks[layer].register_forward_hook(block_hook(layer, fn)) for layer, fn in sorted(edits.items())]
    handles.append(model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1)))
    try:
        with torch.no_grad():
            ids = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=n_new,
                                 do_sample=False, pad_token_id=pad_id)
    finally:
        for handle in handles:
            handle.remove()
    return ids[:, batch.input_ids.shape[1]:]


def rows_up_to_eos(ids: torch.Tensor, eos: int, pad: int) -> list[list[int]]:
    """Each row's tokens through its first EOS; what follows must be padding (a finished row of a batch)."""
    rows = []
    for row in ids.tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        assert all(t == pad for t in row[cut:]), f"tokens after EOS are not padding: {row}"
        rows.append(row[:cut])
    return rows


@contextlib.contextmanager
def generated_ids(access: ModelAccess) -> Iterator[list[torch.Tensor]]:
    """Collect the new token ids behind every ``access.generate`` call in the block."""
    seen: list[torch.Tensor] = []
    inner = access._generate_ids

    def spy(batch, max_new_tokens):
        seen.append(inner(batch, max_new_tokens))
        return seen[-1]

    access._generate_ids = spy
    try:
        yield seen
    finally:
        del access._generate_ids


# -- the models -------------------------------------------------------------------------------------------------------
class Case:
    """One model on both backends, its plain Hugging Face twin, prompts, and how to edit it."""

    def __init__(self, nn, tl, hf, prompts, paste, native):
        self.nn, self.tl, self.hf, self.prompts = nn, tl, hf, prompts
        self._paste, self._native = paste, native  # (adapter, converters), adapter
        self._truth: dict[str, list[list[int]]] = {}

    def edited(self, access: ModelAccess, condition: str):
        if condition == "paste":
            return cv.paste(access, *self._paste)
        if condition == "native":
            return cv.apply_adapter(access, self._native)
        return contextlib.nullcontext(access)

    def truth(self, condition: str) -> list[list[int]]:
        """Each prompt's tokens generated alone by the plain HF model carrying the condition's edit functions."""
        if condition not in self._truth:
            tok, rows = self.nn.tokenizer, []
            with self.edited(self.nn, condition):
                edits = self.nn.active_edits
                for prompt in self.prompts:
                    ids = hf_greedy(self.hf, self.nn.encode([prompt]), edits, N_NEW, tok.pad_token_id)
                    rows += rows_up_to_eos(ids, tok.eos_token_id, tok.pad_token_id)
            self._truth[condition] = rows
        return self._truth[condition]


def _bridge(path, hf, tok):
    from transformer_lens.model_bridge import TransformerBridge

    return cv.open_model(TransformerBridge.boot_transformers(str(path), hf_model=copy.deepcopy(hf), tokenizer=tok))


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _converters(donor: ModelAccess, recipient: ModelAccess, adapter, prompts):
    pd_, pr = cv.profile(donor, prompts, progress=False), cv.profile(recipient, prompts, progress=False)
    layer_map = cv.match_layers(pd_, pr, method="depth", donor_layers=sorted(adapter.interventions))
    return cv.fit_converters(pd_, pr, layer_map, method="pinv")


@pytest.fixture(scope="module")
def zoo_nn():
    return {name: zoo.load_model(name) for name in zoo.list_models()}


def _zoo_case(name, zoo_nn) -> Case:
    nn, path = zoo_nn[name], zoo.model_dir(name)
    test = zoo.prompts("cot", "test")
    # step-by-step under the cue (long), bare (short), a request; different lengths, so batches are padded
    prompts = [zoo.with_cue(test[0], "cot"), test[1], zoo.prompts("refusal", "test")[0]]
    donor = zoo_nn[ZOO_DONOR[name]]
    adapter = zoo.load_adapter(ZOO_DONOR[name], "cot")
    conv = _converters(donor, nn, adapter, zoo.prompts("cot", "train")[:48])
    return Case(nn, zoo.load_model(name, backend="transformer_lens"), _hf(path), prompts, (adapter, conv),
                zoo.load_adapter(name, "cot"))


def _family_model(kind: str) -> torch.nn.Module:
    """A tiny random model of a family the zoo lacks; a large init scale makes greedy choices clear-cut."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=len(VOCAB), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(5)
    if kind == "gpt_neox":  # parallel attention + MLP, fused QKV, partial rotary, LayerNorm
        return GPTNeoXForCausalLM(GPTNeoXConfig(rotary_pct=0.5, **common)).eval()
    return Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=12, **common)).eval()  # q/k norms, GQA


def _family_case(kind, tmp_path_factory, nn_llama) -> Case:
    path = tmp_path_factory.mktemp(kind)
    _family_model(kind).save_pretrained(path)
    tok = _save_tokenizer(path)
    hf = _hf(path)
    nn = cv.open_model(_hf(path), tokenizer=tok, name=kind)
    donor_adapter = random_adapter(nn_llama.d_model, layers=(1, 3), seed=2, scale=2.0)
    conv = _converters(nn_llama, nn, donor_adapter, random_prompts(64, seed=21))
    return Case(nn, _bridge(path, hf, tok), hf, random_prompts(3, seed=11, min_len=2, max_len=8),
                (donor_adapter, conv), random_adapter(nn.d_model, layers=(0, 2), seed=3, scale=2.0))


CASES = ["llama-6x128", "gpt2-4x96", "qwen2-5x160", "gpt_neox", "qwen3"]
DEFAULT = {("llama-6x128", "paste"), ("llama-6x128", "native"), ("gpt2-4x96", "native"), ("qwen2-5x160", "paste"),
           ("gpt_neox", "paste"), ("qwen3", "none")}
"""The default run: every model and every condition at least once (the rest is marked slow)."""
GRID = [pytest.param(name, condition, marks=() if (name, condition) in DEFAULT else pytest.mark.slow)
        for name in CASES for condition in CONDITIONS]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy shared CPU they make generation ~10× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases(zoo_nn, tmp_path_factory, nn_llama):
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            built[name] = (_zoo_case(name, zoo_nn) if name in zoo_nn
                           else _family_case(name, tmp_path_factory, nn_llama))
        return built[name]

    return get


# -- the tests --------------------------------------------------------------------------------------------------------
def test_zoo_covers_every_shipped_model():
    assert sorted(CASES[:3]) == zoo.list_models()


@pytest.mark.parametrize(("name", "condition"), GRID)
def test_both_backends_generate_what_hf_generates(cases, name, condition):
    case = cases(name)
    truth = case.truth(condition)
    assert max(len(row) for row in truth) >= MIN_LONG, f"generations too short to test decoding: {truth}"
    tok = case.nn.tokenizer
    for access in (case.nn, case.tl):
        for side in SIDES:
            batch = access.encode(case.prompts, padding_side=side)
            with case.edited(access, condition), generated_ids(access) as seen:
                texts = access.generate(batch, N_NEW)
            got = rows_up_to_eos(seen[0], tok.eos_token_id, tok.pad_token_id)
            assert got == truth, f"{access.backend}, {side}-padded, {condition}"
            assert texts == access.decode_continuations(torch.tensor([r + [tok.pad_token_id] * (N_NEW - len(r))
                                                                      for r in truth]))
    if condition != "none":
        assert truth != case.truth("none"), f"the {condition} edit changes no generation; the test is vacuous"


def _logging_edit(log: list, shift: torch.Tensor):
    def edit(hidden, ctx):
        log.append((ctx.layer, ctx.step, tuple(ctx.prompt_mask.shape), hidden.detach().clone()))
        return hidden + shift

    edit.acts_on_decode = True
    return edit


def test_decode_edits_get_the_calls_of_a_cached_run(nn_llama, tl_llama, hf_llama):
    """An edit acting on decode steps is called as a cached ``generate`` calls it: once on the prompt (step 0, all
    prompt positions), then once per new token alone (step k), on the same states; and it steers both backends to
    Hugging Face's tokens. (TransformerLens generates without a cache and must replay exactly this.)"""
    batch = nn_llama.encode(random_prompts(3, seed=5, min_len=2, max_len=7), padding_side="right")
    shifts = {1: 2.0 * torch.randn(nn_llama.d_model), 3: 2.0 * torch.randn(nn_llama.d_model)}
    ref_log: list = []
    left = batch.left_padded()
    want = hf_greedy(copy.deepcopy(hf_llama[0]), left, {l: _logging_edit(ref_log, s) for l, s in shifts.items()},
                     N_NEW, nn_llama.tokenizer.pad_token_id)
    assert [(layer, step) for layer, step, *_ in ref_log] == [(l, k) for k in range(want.shape[1]) for l in (1, 3)]
    for access in (nn_llama, tl_llama):
        log: list = []
        with access.edited({l: _logging_edit(log, s) for l, s in shifts.items()}), generated_ids(access) as seen:
            access.generate(batch, N_NEW)
        assert torch.equal(seen[0], want), access.backend
        assert [entry[:3] for entry in log] == [entry[:3] for entry in ref_log], access.backend
        real = left.attention_mask.bool()  # padding positions hold implementation-defined values
        for (_, step, _, got), (*_, expected) in zip(log, ref_log):
            assert got.shape == expected.shape
            torch.testing.assert_close(got[real] if step == 0 else got, expected[real] if step == 0 else expected,
                                       atol=1e-4, rtol=1e-4)
    plain = hf_greedy(hf_llama[0], left, {}, N_NEW, nn_llama.tokenizer.pad_token_id)
    assert not torch.equal(plain, want), "the shifts change nothing; the test is vacuous"


def test_prompt_only_edits_run_once_per_generation(nn_llama, tl_llama):
    """A stateful prompt-pass edit (a recorder) sees the prompt once per ``generate``, also where every step
    recomputes the prompt (TransformerLens, uncached), and records the states a forward pass records."""
    from commandv_interp.access import recording

    batch = nn_llama.encode(random_prompts(4, seed=6), padding_side="left")
    for access in (nn_llama, tl_llama):
        with recording(access, [0, 2]) as states:
            access.generate(batch, 8)
        assert [len(states[layer]) for layer in (0, 2)] == [1, 1], access.backend
        with recording(access, [0, 2]) as forward_states:
            access.forward(batch)
        for layer in (0, 2):
            torch.testing.assert_close(states[layer][0], forward_states[layer][0], atol=1e-5, rtol=1e-5)


def test_right_padded_batches_are_generated_left_padded(nn_llama):
    """``generate`` left-pads a right-padded batch first: same rows, padding moved, real tokens in order."""
    prompts = random_prompts(5, seed=4)
    right, left = nn_llama.encode(prompts, padding_side="right"), nn_llama.encode(prompts, padding_side="left")
    moved = right.left_padded()
    assert torch.equal(moved.input_ids, left.input_ids) and torch.equal(moved.attention_mask, left.attention_mask)
    assert torch.equal(left.left_padded().input_ids, left.input_ids)
