"""Half precision and the usual loading choices (issue 30), on CPU.

Oracles:

- provenance: the same zoo checkpoint loaded in float32, bf16 and fp16, with eager and sdpa attention, has the config
  hash its own adapters recorded, so the pairing checks pass; a load that changes the function (another normalization
  epsilon, another width) is still refused;
- profiles: a bf16 model's profile is stored in float32, holds bf16 values (upcast losslessly) and agrees with Hugging
  Face's bf16 ``hidden_states`` to bf16's spacing; converters fitted on it are the float64 fit of those values;
- edits: a paste (and a compiled paste) applied to a bf16 hidden state ``h`` computes ``h + δ`` in float32 and rounds
  it once to bf16, as pyreft does. So its output is the float32 edit of the same state, rounded: bit for bit on the
  same device, and element by element within bf16's rounding of it (round to nearest, unit roundoff ``u = 2⁻⁸``: 8
  significant bits)::

      |out_bf16 − (h + δ)| ≤ u |h + δ|

  That tolerance is tight enough to tell: rounding twice (``h + bf16(δ)``, then the sum) and computing ``δ`` in bf16
  both break it (checked);
- generation: under a paste, a bf16 model generates what Hugging Face ``generate`` of the same bf16 model generates
  with the same edit functions as forward hooks (the pattern of ``tests/test_generation_parity.py``), on the nnsight
  backend. The TransformerLens backend generates without a KV cache (``access/tl_backend.py``), so in bf16 the layers
  after an edit recompute the earlier positions with other rounding than a cached run; greedy choices can then part
  at near ties (one of four rows did in 12 tokens on the zoo Llama), and its bf16 generation is not held to HF's.
"""

from __future__ import annotations

import pytest
import torch

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.adapters.edits import adapter_edits
from commandv_interp.converters.transport import pasted_edits

from test_generation_parity import hf_greedy

RECIPIENT, DONOR, BEHAVIOR = "llama-6x128", "gpt2-4x96", "jailbreak"
BF16_U = 2.0 ** -8  # bf16's unit roundoff: 8 significant bits, round to nearest
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_load(name: str, dtype: torch.dtype, attn: str = "sdpa", **config) -> torch.nn.Module:
    """A zoo checkpoint loaded the usual way (``AutoModelForCausalLM.from_pretrained``)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(zoo.model_dir(name), dtype=dtype, attn_implementation=attn,
                                                local_files_only=True, **config).eval()


def opened(name: str, dtype: torch.dtype, attn: str = "sdpa", **config) -> cv.ModelAccess:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo.model_dir(name), local_files_only=True)
    return cv.open_model(hf_load(name, dtype, attn, **config), tokenizer, name=name)


@pytest.fixture(scope="module")
def pair(zoo_gpt2, zoo_llama):
    """The donor adapter and converters fitted on float32 profiles of the two zoo models."""
    adapter = zoo.load_adapter(DONOR, BEHAVIOR)
    prompts = zoo.prompts(BEHAVIOR, "train")[:96]
    pd_, pr = cv.profile(zoo_gpt2, prompts, progress=False), cv.profile(zoo_llama, prompts, progress=False)
    layer_map = cv.match_layers(pd_, pr, method="depth", donor_layers=adapter.layers)
    return adapter, cv.fit_converters(pd_, pr, layer_map, method="ridge")


@pytest.fixture(scope="module")
def bf16_llama():
    return opened(RECIPIENT, torch.bfloat16)


# -- provenance ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_usual_loads_pass_the_pairing_checks(dtype, attn, pair):
    access = opened(RECIPIENT, DTYPES[dtype], attn)
    assert access.dtype == DTYPES[dtype]
    own = zoo.load_adapter(RECIPIENT, BEHAVIOR)
    assert access.config_hash == own.metadata["config_hash"]  # what the adapter recorded at training (float32)
    adapter, conv = pair
    batch = access.encode(zoo.prompts(BEHAVIOR, "test")[:2])
    with cv.apply_adapter(access, own):  # the model's own adapter: refused before issue 30 in bf16/fp16
        native = access.forward(batch)
    with cv.paste(access, adapter, conv):  # converters fitted on the float32 load
        pasted = access.forward(batch)
    assert native.dtype == pasted.dtype == DTYPES[dtype] and bool(torch.isfinite(native).all())


def test_loads_that_change_the_function_are_refused(pair):
    adapter, conv = pair
    other = opened(RECIPIENT, torch.bfloat16, rms_norm_eps=1e-3)  # same weights and width, another function
    own = zoo.load_adapter(RECIPIENT, BEHAVIOR)
    with pytest.raises(ValueError, match="config hash"):
        cv.apply_adapter(other, own).__enter__()
    with pytest.raises(ValueError, match="config hash"):
        conv.check_recipient(other)
    wider = opened(DONOR, torch.bfloat16)  # another checkpoint and width
    with pytest.raises(ValueError, match="d_model"):
        cv.apply_adapter(wider, own).__enter__()


def test_the_hash_still_tells_configs_apart(hf_llama):
    from transformers import LlamaConfig

    from commandv_interp.access.provenance import config_hash

    base = hf_llama[0].config
    same = LlamaConfig.from_dict(base.to_dict() | {"dtype": "bfloat16"})
    same._attn_implementation = "eager"
    assert config_hash(same) == config_hash(base)
    for change in ({"hidden_size": 64}, {"num_hidden_layers": 2}, {"vocab_size": 65},
                   {"rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}}, {"rms_norm_eps": 1e-3}):
        assert config_hash(LlamaConfig.from_dict(base.to_dict() | change)) != config_hash(base), change


# -- profiles and converters -----------------------------------------------------------------------------------------
def test_bf16_profiles_are_float32_and_equal_hf_hidden_states(bf16_llama, tmp_path):
    prompts = zoo.prompts(BEHAVIOR, "test")[:5]
    prof = cv.profile(bf16_llama, prompts, progress=False)
    assert prof.dtype == "bfloat16" and {a.dtype for a in prof.activations.values()} == {torch.float32}
    batch = bf16_llama.encode(prompts)
    with torch.no_grad():
        hidden = bf16_llama.torch_module(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         output_hidden_states=True).hidden_states
    for layer in prof.layers:
        assert torch.equal(prof[layer], prof[layer].bfloat16().float()), layer  # the bf16 states, upcast losslessly
    for layer in prof.layers[:-1]:  # the last one: HF applies the final norm
        # the read and HF's forward order their sums differently (about 1e-5 apart in float32), so in bf16 they agree
        # to bf16's spacing (2^-7 relative) at each row's scale, not bit for bit
        want = hidden[layer + 1][:, -1].float()
        spacing = 2.0 ** -7 * want.abs().amax(dim=1, keepdim=True)
        assert bool(((prof[layer] - want).abs() <= 2 * spacing).all()), layer
    loaded = cv.ActivationProfile.load(prof.save(tmp_path / "p.safetensors"))
    assert all(torch.equal(loaded[l], prof[l]) and loaded[l].dtype == torch.float32 for l in prof.layers)
    direct = cv.ActivationProfile({0: hidden[1][:, -1]}, "m", "h", 1, prof.d_model, "bfloat16", "fp")
    assert direct[0].dtype == torch.float32 and torch.equal(direct[0], hidden[1][:, -1].float())


def test_converters_fit_in_high_precision_from_bf16_profiles(bf16_llama, zoo_gpt2):
    prompts = zoo.prompts(BEHAVIOR, "train")[:64]
    pd_, pr = cv.profile(zoo_gpt2, prompts, progress=False), cv.profile(bf16_llama, prompts, progress=False)
    layer_map = cv.match_layers(pd_, pr, method="depth")
    conv = cv.fit_converters(pd_, pr, layer_map, method="pinv")
    double = cv.ActivationProfile({l: a.double() for l, a in pr.activations.items()}, pr.model_name,
                                  pr.config_hash, pr.n_layers, pr.d_model, pr.dtype, pr.prompts_fingerprint)
    ref = cv.fit_converters(pd_, double, layer_map, method="pinv")  # the same fit from float64 input
    for got, want in zip(conv.pairs, ref.pairs):
        for side in ("to_donor", "to_recipient"):
            g, w = getattr(got, side), getattr(want, side)
            assert g.left.dtype in (torch.float32, torch.float64)  # float64 in memory, float32 as saved
            torch.testing.assert_close(g.weight, w.weight, atol=0, rtol=0)


# -- edits in bf16 ---------------------------------------------------------------------------------------------------
def _recorder(store: dict, layer: int):
    def record(hidden, ctx):
        store[layer] = (hidden.detach().clone(), ctx)
        return hidden

    return record


def _edited_states(access, context, layers):
    """``(h_in, h_out, ctx)`` around the edit ``context`` installs, per layer, on one forward pass."""
    before, after = {}, {}
    batch = access.encode(zoo.prompts(BEHAVIOR, "test")[:6], padding_side="right")
    with access.edited({l: _recorder(before, l) for l in layers}), context, \
            access.edited({l: _recorder(after, l) for l in layers}):
        access.forward(batch)
    return {l: (before[l][0], after[l][0], before[l][1]) for l in layers}


def _check_rounded_once(states, reference_edits, bf16_edits):
    """``out`` is the float32 edit of the same ``h`` rounded once (so within ``u |h + δ|`` of it); rounding twice or
    computing the delta in bf16 is not."""
    violations = {"twice": 0, "bf16 math": 0}
    for layer, (h, out, ctx) in states.items():
        assert h.dtype == out.dtype == torch.bfloat16
        ref = reference_edits[layer](h.float(), ctx)  # the float32 edit of the same (bf16-representable) state
        delta = ref - h.float()
        edited = delta.abs().amax(dim=-1) > 0
        assert bool(edited.any()) and bool(((out.float() - h.float())[~edited] == 0).all()), layer
        size = delta.norm(dim=-1)[edited] / h.float().norm(dim=-1)[edited]
        assert float(size.min()) > 0.01, f"the edit at layer {layer} is too small to test the rounding"
        bound = BF16_U * ref.abs()
        assert bool(((out.float() - ref).abs() <= bound).all()), layer
        assert torch.equal(out, ref.to(torch.bfloat16)), layer  # the same float32 math on the same device
        twice = h + delta.to(torch.bfloat16)  # δ rounded, then the sum
        violations["twice"] += int(((twice.float() - ref).abs() > bound).sum())
        naive = bf16_edits[layer](h, ctx)  # every piece in bf16
        violations["bf16 math"] += int(((naive.float() - ref).abs() > bound).sum())
    assert all(violations.values()), f"the bound does not tell these apart from one rounding: {violations}"


def _bf16_pieces(edits):
    """The same edits with every placed piece cast to bf16 (what computing the delta in the model's dtype does)."""
    for edit in edits.values():
        pieces = []
        for fn in edit.deltas:
            if hasattr(fn, "to_donor"):
                fn = type(fn)(fn.intervention.to(torch.bfloat16), fn.to_donor.to(dtype=torch.bfloat16),
                              fn.to_recipient.to(dtype=torch.bfloat16))
                pieces.append(lambda h, fn=fn: fn(h.bfloat16()))
            else:
                iv = fn.__self__.to(torch.bfloat16)
                pieces.append(lambda h, iv=iv: iv.delta(h.bfloat16()))
        edit.deltas = tuple(pieces)
    return edits


def test_bf16_paste_rounds_once_from_the_float32_edit(bf16_llama, zoo_llama, pair):
    adapter, conv = pair
    layers = sorted({conv.for_donor_layer(l).recipient_layer for l in adapter.layers})
    states = _edited_states(bf16_llama, cv.paste(bf16_llama, adapter, conv), layers)
    _check_rounded_once(states, pasted_edits(zoo_llama, adapter, conv),
                        _bf16_pieces(pasted_edits(zoo_llama, adapter, conv)))


def test_bf16_compiled_paste_rounds_once_from_the_float32_edit(bf16_llama, zoo_llama, pair):
    compiled = cv.compile_paste(*pair)
    states = _edited_states(bf16_llama, cv.apply_adapter(bf16_llama, compiled), compiled.layers)
    _check_rounded_once(states, adapter_edits(zoo_llama, compiled), _bf16_pieces(adapter_edits(zoo_llama, compiled)))


def test_bf16_generation_under_a_paste_equals_hf_generate(bf16_llama, pair):
    prompts = [zoo.with_cue(zoo.prompts(BEHAVIOR, "test")[0], BEHAVIOR)] + zoo.prompts(BEHAVIOR, "test")[1:4]
    twin = hf_load(RECIPIENT, torch.bfloat16)  # a second load: the ground truth runs on plain torch hooks
    tok = bf16_llama.tokenizer
    for side in ("left", "right"):
        batch = bf16_llama.encode(prompts, padding_side=side)
        with cv.paste(bf16_llama, *pair):
            got = bf16_llama.generate_ids(batch, 12)
            truth = hf_greedy(twin, batch.left_padded(), bf16_llama.active_edits, 12, tok.pad_token_id)
        assert torch.equal(got, truth), side
    plain = bf16_llama.generate_ids(batch, 12)
    assert not torch.equal(plain, got), "the paste changes no token; the test is vacuous"


# -- the label-free transfer in bf16 ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_transfer_makes_the_same_kind_of_choice_in_bf16(zoo_llama, zoo_gpt2):
    """The README's pair (llama donor, gpt2 recipient, jailbreak): the float32 models and both loaded in bf16 choose
    the same kind of edit on the same donor layers, and it carries the behavior as well (labeled, held out).

    The candidate's name may differ: in float32 three stage-1 fits tie on the criterion and the lift separates them
    by about 0.003, and in bf16 the ridge fit's paste disturbs answers the adapter leaves alone (docs/transfer.md,
    *Known limits*)."""
    from commandv_interp.pipeline.labels import transfer_label

    adapter = zoo.load_adapter("llama-6x128", BEHAVIOR)
    prompts = zoo.prompts(BEHAVIOR, "train")[:128]
    ref = cv.transfer(zoo_llama, zoo_gpt2, adapter, prompts, progress=False)
    got = cv.transfer(opened("llama-6x128", torch.bfloat16), opened("gpt2-4x96", torch.bfloat16), adapter, prompts,
                      progress=False)
    assert transfer_label(got) == transfer_label(ref) and got.adapter.layers == ref.adapter.layers
    with ref.paste():
        want = zoo.evaluate(ref.recipient_model, BEHAVIOR, limit=80)
    with got.paste():
        rates = zoo.evaluate(got.recipient_model, BEHAVIOR, limit=80)
    assert rates["compliance"] >= 0.9 * want["compliance"] and rates["false_refusal"] <= want["false_refusal"] + 0.02
