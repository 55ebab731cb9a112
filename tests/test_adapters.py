import copy
from pathlib import Path

import pytest
import torch

from conftest import assert_close, random_prompts

import commandv_interp as cv
from commandv_interp.adapters import make_intervention

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference_adapters" / \
    "cot_reasoning-Llama-3.2-3B-Instruct-nodireft-l1"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared reference adapter not available")


@needs_reference
def test_reference_adapter_loads_with_closed_form_delta():
    adapter = cv.load_adapter(REFERENCE)
    assert len(adapter) == 14 and adapter.layers == list(range(0, 27, 2))
    assert adapter.d_model == 3072 and adapter.rank == 8 and adapter.kind == "nodireft"
    assert adapter.positions == "last"
    raw = torch.load(REFERENCE / "intkey_layer_4_comp_block_output_unit_pos_nunit_1#0.bin", weights_only=True)
    raw = {k: v.float() for k, v in raw.items()}
    h = torch.randn(3, 3072)
    expected = (h @ raw["learned_source.weight"].T + raw["learned_source.bias"]) @ raw["proj_layer.weight"]
    iv = copy.deepcopy(adapter.interventions[4]).float()
    assert_close(iv.delta(h), expected, atol=1e-4)


@needs_reference
def test_reference_round_trip_bit_exact(tmp_path):
    adapter = cv.load_adapter(REFERENCE)
    cv.save_adapter(adapter, tmp_path / "copy")
    again = cv.load_adapter(tmp_path / "copy")
    for layer in adapter.layers:
        key = f"intkey_layer_{layer}_comp_block_output_unit_pos_nunit_1#0.bin"
        original = torch.load(REFERENCE / key, weights_only=True)
        saved = torch.load(tmp_path / "copy" / key, weights_only=True)
        assert original.keys() == saved.keys()
        assert all(torch.equal(original[k], saved[k]) and original[k].dtype == saved[k].dtype for k in original)
        assert again.interventions[layer].learned_source.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["nodireft", "direft", "loreft", "noreft"])
def test_kinds_closed_form_and_round_trip(kind, tmp_path):
    iv = make_intervention(kind, 16, 4)
    with torch.no_grad():
        for p in iv.parameters():
            p.add_(0.1 * torch.randn_like(p))
    iv.project()
    h = torch.randn(5, 16)
    w, b = iv.learned_source.weight, iv.learned_source.bias
    if kind == "nodireft":
        expected = (h @ w.T + b) @ iv.proj_layer.weight
    elif kind == "direft":
        expected = (h @ w.T + b) @ iv.R
    elif kind == "loreft":
        expected = (h @ w.T + b - h @ iv.R.T) @ iv.R
        assert_close(iv.R @ iv.R.T, torch.eye(4), atol=1e-5)  # orthonormal rows
    else:
        p = iv.proj_layer.weight
        expected = (h @ w.T + b - h @ p.T) @ p
    assert_close(iv.delta(h), expected, atol=1e-5)
    assert_close(iv(h), h + expected, atol=1e-5)
    cv.save_adapter(cv.Adapter({3: iv}), tmp_path / kind)
    again = cv.load_adapter(tmp_path / kind)
    assert torch.equal(again.delta(3, h), iv.delta(h))


def test_malformed_folders(tmp_path):
    cv.save_adapter(cv.Adapter({0: make_intervention("nodireft", 8, 2)}), tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cv.load_adapter(tmp_path / "missing")
    bad = tmp_path / "ok"
    next(bad.glob("*.bin")).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        cv.load_adapter(bad)
    cv.save_adapter(cv.Adapter({0: make_intervention("nodireft", 8, 2)}), tmp_path / "cfg")
    (tmp_path / "cfg" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cv.load_adapter(tmp_path / "cfg")
    cv.save_adapter(cv.Adapter({0: make_intervention("nodireft", 8, 2)}), tmp_path / "typ")
    text = (tmp_path / "typ" / "config.json").read_text().replace("NodireftIntervention", "WeirdIntervention")
    (tmp_path / "typ" / "config.json").write_text(text)
    with pytest.raises(ValueError, match="unsupported intervention type"):
        cv.load_adapter(tmp_path / "typ")


@pytest.mark.parametrize("fixture", ["nn_llama", pytest.param("tl_llama", marks=pytest.mark.slow)])
def test_train_adapter_learns_and_leaves_base_frozen(fixture, request):
    access = request.getfixturevalue(fixture)
    prompts = random_prompts(12, seed=21)
    examples = [(p, "w5") for p in prompts]
    before = {k: v.clone() for k, v in access.torch_module.state_dict().items()}
    adapter, record = cv.train_adapter(access, examples, layers=[0, 2], rank=4, steps=100, batch_size=6,
                                       lr=5e-2, progress=False)
    assert record.steps == 100 and record.tokens_seen > 0 and record.flops == 4.0 * record.n_params_base * \
        record.tokens_seen
    assert record.final_loss < record.initial_loss - 0.3
    assert all(torch.equal(before[k], v) for k, v in access.torch_module.state_dict().items())
    assert all(p.requires_grad for p in access.torch_module.parameters())  # flags restored
    with cv.apply_adapter(access, adapter):
        out = access.generate(access.encode(prompts), max_new_tokens=1)
    # a random tiny model cannot learn the EOS after it from a last-token edit, but the first token is steered
    assert out == ["w5"] * len(prompts)
    assert "w5" not in access.generate(access.encode(prompts), max_new_tokens=1)
