"""On a CUDA device (``pytest -m gpu``; skipped without one): placement, bf16 edits and the transfer on the GPU.

Oracles, as on the CPU (``tests/test_dtypes.py``, ``tests/test_devices.py``):

- a float32 profile read on the GPU equals the CPU's (float32 kernels differ in summation order only), stored on the
  CPU in float32;
- every pasted piece is placed on the GPU, the adapter and converters stay where they were;
- a bf16 paste on the GPU rounds once from the float32 edit of the same state (the bound of ``test_dtypes.py``, plus
  float32 slack for CPU/GPU kernel differences in the reference);
- greedy generation under a bf16 paste on the GPU equals Hugging Face ``generate`` of the same model with the same
  edits as forward hooks;
- ``cv.transfer`` on the README's zoo pair makes the same choice on the GPU in bf16 as on the CPU in float32.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.converters.transport import pasted_deltas, pasted_edits

from test_dtypes import BEHAVIOR, BF16_U, RECIPIENT, _edited_states, hf_load
from test_generation_parity import hf_greedy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def on_gpu(name: str, dtype: torch.dtype) -> cv.ModelAccess:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo.model_dir(name), local_files_only=True)
    return cv.open_model(hf_load(name, dtype).to(CUDA), tokenizer, name=name)


@pytest.fixture(scope="module")
def pair(zoo_gpt2, zoo_llama):
    adapter = zoo.load_adapter("gpt2-4x96", BEHAVIOR)
    prompts = zoo.prompts(BEHAVIOR, "train")[:96]
    pd_, pr = cv.profile(zoo_gpt2, prompts, progress=False), cv.profile(zoo_llama, prompts, progress=False)
    layer_map = cv.match_layers(pd_, pr, method="depth", donor_layers=adapter.layers)
    return adapter, cv.fit_converters(pd_, pr, layer_map, method="ridge")


def test_float32_profile_on_the_gpu_equals_the_cpus(zoo_llama):
    prompts = zoo.prompts(BEHAVIOR, "test")[:16]
    got = cv.profile(on_gpu(RECIPIENT, torch.float32), prompts, progress=False)
    want = cv.profile(zoo_llama, prompts, progress=False)
    for layer in want.layers:
        assert got[layer].device.type == "cpu" and got[layer].dtype == torch.float32
        assert_close(got[layer], want[layer], atol=1e-4, rtol=1e-4)  # summation order only


def test_pieces_are_placed_on_the_gpu(pair):
    adapter, conv = pair
    access = on_gpu(RECIPIENT, torch.bfloat16)
    for fns in pasted_deltas(access, adapter, conv).values():
        for fn in fns:
            tensors = [*fn.intervention.parameters(), fn.to_donor.left, fn.to_recipient.left]
            assert {t.device.type for t in tensors} == {"cuda"}
            assert {t.dtype for t in tensors} == {torch.float32}  # the delta is computed in float32
    assert {p.device.type for iv in adapter.interventions.values() for p in iv.parameters()} == {"cpu"}
    assert conv.pairs[0].to_donor.left.device.type == "cpu"


def test_bf16_paste_on_the_gpu_rounds_once(pair, zoo_llama):
    adapter, conv = pair
    access = on_gpu(RECIPIENT, torch.bfloat16)
    layers = sorted({conv.for_donor_layer(l).recipient_layer for l in adapter.layers})
    states = _edited_states(access, cv.paste(access, adapter, conv), layers)
    reference = pasted_edits(zoo_llama, adapter, conv)  # float32, on the CPU
    for layer, (h, out, ctx) in states.items():
        assert h.device.type == "cuda" and out.dtype == torch.bfloat16
        h, out = h.cpu(), out.cpu()
        ctx = type(ctx)(ctx.layer, ctx.step, ctx.prompt_mask.cpu())
        ref = reference[layer](h.float(), ctx)
        slack = 1e-5 * ref.abs().amax(dim=-1, keepdim=True)  # float32 kernels of the CPU and the GPU
        bound = BF16_U * (ref.abs() + slack) + slack
        assert bool(((out.float() - ref).abs() <= bound).all()), layer


def test_bf16_generation_under_a_paste_on_the_gpu_equals_hf_generate(pair):
    access = on_gpu(RECIPIENT, torch.bfloat16)
    twin = hf_load(RECIPIENT, torch.bfloat16).to(CUDA)
    prompts = [zoo.with_cue(zoo.prompts(BEHAVIOR, "test")[0], BEHAVIOR)] + zoo.prompts(BEHAVIOR, "test")[1:6]
    batch = access.encode(prompts, padding_side="right")
    with cv.paste(access, *pair):
        got = access.generate_ids(batch, 12)
        left = batch.left_padded().to(CUDA)
        truth = hf_greedy(twin, left, access.active_edits, 12, access.tokenizer.pad_token_id)
    assert torch.equal(got.cpu(), truth.cpu())
    assert not torch.equal(access.generate_ids(batch, 12).cpu(), got.cpu()), "the paste changes no token"


def test_transfer_on_the_gpu_makes_the_cpus_choice(zoo_llama, zoo_gpt2):
    adapter = zoo.load_adapter("llama-6x128", "jailbreak")
    prompts = zoo.prompts("jailbreak", "train")[:128]
    ref = cv.transfer(zoo_llama, zoo_gpt2, adapter, prompts, progress=False)
    got = cv.transfer(on_gpu("llama-6x128", torch.bfloat16), on_gpu("gpt2-4x96", torch.bfloat16), adapter, prompts,
                      progress=False)
    assert got.choice == ref.choice and got.layer_map == ref.layer_map
    assert got.alpha == pytest.approx(ref.alpha, rel=0.05)
