"""Storage computed from shapes equals the storage of real profiles, converters and adapters."""

import pytest
import torch

from conftest import random_prompts

import commandv_interp as cv
from commandv_interp.adapters import make_intervention
from commandv_interp.pipeline.storage import storage_table


def _numel(*tensors):
    return sum(t.numel() for t in tensors if t is not None)


@pytest.mark.parametrize("n_prompts", [10, 96])  # fewer prompts than width: factored; more: dense
def test_storage_table_matches_real_artifacts(nn_llama, nn_gpt2, n_prompts, tmp_path):
    prompts = random_prompts(n_prompts, seed=3)
    pd_, pr = cv.profile(nn_llama, prompts, progress=False), cv.profile(nn_gpt2, prompts, progress=False)
    layers = [0, 2]
    conv = cv.fit_converters(pd_, pr, cv.match_layers(pd_, pr, donor_layers=layers), method="ridge")
    adapter = cv.Adapter({layer: make_intervention("nodireft", nn_llama.d_model, 4) for layer in layers})
    compiled = cv.compile_paste(adapter, conv)
    table = storage_table(nn_llama.d_model, nn_llama.n_layers, nn_gpt2.d_model, nn_gpt2.n_layers, n_prompts,
                          adapter_layers=len(layers), rank=4).set_index("artifact")["numbers"]
    assert table["donor profile"] == _numel(*pd_.activations.values())
    assert table["recipient profile"] == _numel(*pr.activations.values())
    stored = _numel(*(t for p in conv for c in (p.to_donor, p.to_recipient) for t in (c.left, c.right, c.bias)))
    assert table["converters (as stored)"] == stored
    from safetensors.torch import load_file

    saved = load_file(str(conv.save(tmp_path / "conv.safetensors")))  # the bytes on disk: float32, factored
    byte_table = storage_table(nn_llama.d_model, nn_llama.n_layers, nn_gpt2.d_model, nn_gpt2.n_layers, n_prompts,
                               adapter_layers=len(layers), rank=4).set_index("artifact")["bytes"]
    assert byte_table["converters (as stored)"] == sum(t.numel() * t.element_size() for t in saved.values())
    back = cv.Converters.load(tmp_path / "conv.safetensors")
    for a, b in zip(conv, back):  # float32 storage reproduces the float64 fit's map to 1e-5 (relative)
        w, w32 = a.to_donor.weight, b.to_donor.weight.double()
        assert float((w - w32).norm() / w.norm()) < 1e-5
    assert any(p.to_donor.right is not None for p in conv) == (n_prompts < nn_gpt2.d_model)
    assert table["converters, dense (not stored)"] == len(layers) * 2 * nn_llama.d_model * nn_gpt2.d_model
    assert table["donor adapter"] == _numel(*(p for iv in adapter.interventions.values() for p in iv.parameters()))
    assert table["compiled paste"] == _numel(*(p for iv in compiled.interventions.values() for p in iv.parameters()))


def test_storage_table_refuses_nonsense():
    with pytest.raises(ValueError, match="n_prompts"):
        storage_table(64, 2, 32, 2, n_prompts=0, adapter_layers=1, rank=4)
