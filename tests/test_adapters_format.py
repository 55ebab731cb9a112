"""Oracle tests for ReFT interventions and the pyreft/pyvene folder format (CPU, no downloads)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_close

from commandv_interp.adapters import (
    INTERVENTION_KINDS,
    Adapter,
    DiReFT,
    LoReFT,
    NodiReFT,
    NoReFT,
    load_adapter,
    load_pyreft_folder,
    save_pyreft_folder,
)
from commandv_interp.adapters.pyreft_format import parse_pyreft_positions

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference_adapters" / \
    "cot_reasoning-Llama-3.2-3B-Instruct-nodireft-l1"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared reference adapter not available")
KEY = "layer_{}_comp_block_output_unit_pos_nunit_1#0"
SEMANTIC = ("sorted_keys", "representations", "intervention_types", "intervention_dimensions",
            "intervention_constant_sources", "mode")
PYREFT_KEYS = {
    "nodireft": ["embed_dim", "interchange_dim", "proj_layer.weight", "proj_layer.bias", "learned_source.weight",
                 "learned_source.bias"],
    "noreft": ["embed_dim", "interchange_dim", "proj_layer.weight", "proj_layer.bias", "learned_source.weight",
               "learned_source.bias"],
    "direft": ["embed_dim", "interchange_dim", "rotate_layer.parametrizations.weight.original",
               "rotate_layer.parametrizations.weight.0.base", "learned_source.weight", "learned_source.bias"],
    "loreft": ["weight", "bias", "rotate_layer"],
}


def _bin(folder: Path, layer: int) -> dict:
    return torch.load(folder / f"intkey_{KEY.format(layer)}.bin", weights_only=True, map_location="cpu")


def _random(kind: str, d: int = 16, r: int = 4, act: str = "linear"):
    cls = INTERVENTION_KINDS[kind]
    iv = cls(d, r, act)  # projected kinds keep pyreft's add_bias=True default here, so b_p is exercised
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn_like(p))
    iv.project()
    return iv


@needs_reference
def test_reference_loads_as_14_bf16_nodireft_layers():
    adapter = load_adapter(REFERENCE)
    assert adapter.layers == list(range(0, 27, 2)) and len(adapter) == 14
    assert all(isinstance(iv, NodiReFT) for iv in adapter.interventions.values())
    assert (adapter.d_model, adapter.rank, adapter.kind, adapter.positions) == (3072, 8, "nodireft", "last")
    assert adapter.metadata["positions_source"] == "training_metadata.json"
    assert adapter.metadata["model_name"] == "meta-llama/Llama-3.2-3B-Instruct"
    iv = adapter.interventions[26]
    assert iv.learned_source.weight.dtype == torch.bfloat16 and iv.proj_layer.weight.dtype == torch.bfloat16
    assert iv.act_name == "linear" and int(iv.interchange_dim) == 3072


@needs_reference
def test_reference_delta_is_closed_form_of_raw_tensors():
    adapter = load_pyreft_folder(REFERENCE)
    raw = _bin(REFERENCE, 12)
    h = torch.randn(2, 5, 3072, dtype=torch.bfloat16)
    w, b, p = raw["learned_source.weight"], raw["learned_source.bias"], raw["proj_layer.weight"]
    assert torch.equal(adapter.delta(12, h), torch.nn.functional.linear(h, w, b) @ p)  # pyreft's bf16 ops
    hf = h.float()
    expected = (hf @ w.float().T + b.float()) @ p.float()
    # bf16 rounding of the rank-8 source and the product: tolerance scaled to the output magnitude
    assert_close(adapter.delta(12, h).float(), expected, atol=2e-2 * expected.abs().max().item(), rtol=2e-2)
    assert torch.equal(adapter.interventions[12](h), h + adapter.delta(12, h))


@needs_reference
def test_reference_round_trip_is_bit_exact(tmp_path):
    adapter = load_pyreft_folder(REFERENCE)
    out = save_pyreft_folder(adapter, tmp_path / "copy")
    for layer in adapter.layers:
        original, saved = _bin(REFERENCE, layer), _bin(out, layer)
        assert list(original) == list(saved)
        for k in original:
            assert original[k].dtype == saved[k].dtype and torch.equal(original[k], saved[k]), k
    ref_cfg = json.loads((REFERENCE / "config.json").read_text())
    new_cfg = json.loads((out / "config.json").read_text())
    assert {k: ref_cfg[k] for k in SEMANTIC} == {k: new_cfg[k] for k in SEMANTIC}
    again = load_pyreft_folder(out)
    assert again.positions == adapter.positions and again.metadata == adapter.metadata
    for layer in adapter.layers:
        a, b = adapter.interventions[layer].state_dict(), again.interventions[layer].state_dict()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("kind", ["nodireft", "direft", "loreft", "noreft"])
def test_kind_closed_form(kind):
    iv = _random(kind)
    h = torch.randn(3, 7, 16)
    w, b = iv.learned_source.weight, iv.learned_source.bias
    source = h @ w.T + b
    if kind == "nodireft":
        expected = source @ iv.proj_layer.weight
    elif kind == "noreft":
        p = iv.proj_layer
        expected = (source - (h @ p.weight.T + p.bias)) @ p.weight
    else:
        r = iv.rotate_layer.T
        assert_close(r @ r.T, torch.eye(4), atol=1e-5)  # orthonormal rows
        expected = source @ r if kind == "direft" else (source - h @ r.T) @ r
    assert_close(iv.delta(h), expected, atol=1e-4)
    assert_close(iv(h), h + expected, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "tanh"])
def test_activation_applies_to_source(act):
    iv = _random("direft", act=act)
    h = torch.randn(4, 16)
    fn = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
          "tanh": torch.tanh}[act]
    assert_close(iv.delta(h), fn(h @ iv.learned_source.weight.T + iv.learned_source.bias) @ iv.rotate_layer.T)


@pytest.mark.parametrize("kind", ["nodireft", "direft", "loreft", "noreft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kind_state_dict_is_pyreft_layout_and_round_trips(kind, dtype, tmp_path):
    iv = _random(kind, act="gelu").to(dtype)
    state = iv.state_dict()
    assert list(state) == PYREFT_KEYS[kind]
    again = type(iv).from_state_dict(state, act="gelu")
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in again.state_dict().items())
    h = torch.randn(5, 16, dtype=dtype)
    assert torch.equal(again.delta(h), iv.delta(h))
    adapter = Adapter({3: iv, 1: _random(kind).to(dtype)}, positions="first_last", first_last_k=2,
                      metadata={"behavior": "test"})
    loaded = load_pyreft_folder(save_pyreft_folder(adapter, tmp_path / kind))
    assert (loaded.layers, loaded.positions, loaded.first_last_k) == ([1, 3], "first_last", 2)
    assert loaded.metadata == {"behavior": "test"} and loaded.interventions[3].act_name == "gelu"
    for layer in (1, 3):
        a, b = adapter.interventions[layer].state_dict(), _bin(tmp_path / kind, layer)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
        assert torch.equal(loaded.delta(layer, h), adapter.delta(layer, h))


def test_pyreft_parametrized_direft_loads_as_torch_evaluates_it():
    """A DiReFT saved by pyreft after training (generic ``original``) gives torch's parametrized weight."""
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(torch.randn(16, 4))  # not torch.empty: uninitialized memory made it flaky
    holder = torch.nn.utils.parametrizations.orthogonal(holder)
    with torch.no_grad():
        # training moves only the strictly lower part; the diagonal holds the ±1 signs
        holder.parametrizations.weight.original.add_(torch.randn(16, 4).tril(-1))
    iv = _random("direft")
    state = {k: v for k, v in iv.state_dict().items() if "rotate_layer" not in k}
    state |= {f"rotate_layer.{k}": v for k, v in holder.state_dict().items()}
    loaded = DiReFT.from_state_dict(state)
    # same parametrization, evaluated twice: equal up to float rounding (bit equality depends on thread count)
    assert_close(loaded.rotate_layer, holder.weight.detach(), atol=1e-6, rtol=1e-6)
    assert_close(loaded.R @ loaded.R.T, torch.eye(4), atol=1e-5)


def test_loreft_accepts_learned_source_prefix_and_noreft_without_bias():
    iv = _random("loreft")
    named = {"learned_source.weight": iv.learned_source.weight, "learned_source.bias": iv.learned_source.bias,
             "rotate_layer": iv.rotate_layer}
    assert torch.equal(LoReFT.from_state_dict(named).rotate_layer, iv.rotate_layer)
    no_bias = NoReFT(16, 4, proj_bias=False)
    again = NoReFT.from_state_dict(no_bias.state_dict())
    assert again.proj_layer.bias is None and "proj_layer.bias" not in again.state_dict()


def test_registry_and_positions():
    assert {k: v.__name__ for k, v in INTERVENTION_KINDS.items()} == {
        "nodireft": "NodiReFT", "direft": "DiReFT", "loreft": "LoReFT", "noreft": "NoReFT",
        "NodireftIntervention": "NodiReFT", "DireftIntervention": "DiReFT", "LoreftIntervention": "LoReFT",
        "NoreftIntervention": "NoReFT"}
    assert parse_pyreft_positions("l1") == ("last", None)
    assert parse_pyreft_positions("f2+l2") == ("first_last", 2)
    with pytest.raises(ValueError, match="'l3'"):
        parse_pyreft_positions("l3")


def test_adapter_validation_and_to():
    iv = _random("nodireft")
    with pytest.raises(ValueError, match="share d_model"):
        Adapter({0: iv, 1: _random("nodireft", d=8)})
    with pytest.raises(ValueError, match="positions"):
        Adapter({0: iv}, positions="middle")
    with pytest.raises(ValueError, match="first_last_k"):
        Adapter({0: iv}, positions="first_last")
    with pytest.raises(ValueError, match="empty"):
        Adapter({})
    adapter = Adapter({0: iv}, metadata={"d_model": 16})
    with pytest.raises(ValueError, match=r"layers are \[0\]"):
        adapter.delta(5, torch.randn(16))
    half = adapter.to(dtype=torch.float64)
    assert half.interventions[0].learned_source.weight.dtype == torch.float64
    assert iv.learned_source.weight.dtype == torch.float32 and half.metadata == adapter.metadata
    with pytest.raises(AttributeError):
        adapter.positions = "all"


def _saved(tmp_path: Path, name: str) -> Path:
    adapter = Adapter({0: _random("nodireft"), 2: _random("nodireft")})
    return save_pyreft_folder(adapter, tmp_path / name)


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_malformed_folders_raise_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pyreft_folder(tmp_path / "absent")
    folder = _saved(tmp_path, "no_bin")
    (folder / f"intkey_{KEY.format(2)}.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"layer_2.*missing"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "no_config")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "bad_json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "bad_type")
    _edit_config(folder, lambda c: c["intervention_types"].__setitem__(0, "<class 'pyreft.X.WeirdIntervention'>"))
    with pytest.raises(ValueError, match="unsupported intervention type"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "wrong_type")
    _edit_config(folder, lambda c: c["intervention_types"].__setitem__(0, "<class 'pyreft.LoreftIntervention'>"))
    with pytest.raises(ValueError, match="does not match LoreftIntervention"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "bad_dim")
    _edit_config(folder, lambda c: c["intervention_dimensions"].__setitem__(1, 32))
    with pytest.raises(ValueError, match="intervention_dimensions=32"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "twice")
    shutil.copy(folder / f"intkey_{KEY.format(0)}.bin", folder / f"intkey_{KEY.format(2).replace('#0', '#1')}.bin")
    _edit_config(folder, lambda c: [c["sorted_keys"].__setitem__(0, KEY.format(2).replace("#0", "#1")),
                                    c["representations"][0].__setitem__(0, 2)])
    with pytest.raises(ValueError, match="two interventions at layer 2"):
        load_pyreft_folder(folder)
    folder = _saved(tmp_path, "mlp")
    _edit_config(folder, lambda c: c["sorted_keys"].__setitem__(0, "layer_0_comp_mlp_output_unit_pos_nunit_1#0"))
    with pytest.raises(ValueError, match="'mlp_output'.*block_output"):
        load_pyreft_folder(folder)


def test_save_is_atomic_and_refuses_foreign_folders(tmp_path):
    folder = _saved(tmp_path, "a")
    second = Adapter({5: _random("loreft")})
    save_pyreft_folder(second, folder)  # replaces an existing adapter folder
    assert load_pyreft_folder(folder).layers == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folders left behind
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an adapter folder"):
        save_pyreft_folder(second, foreign)
    assert (foreign / "keep.txt").read_text() == "x"
