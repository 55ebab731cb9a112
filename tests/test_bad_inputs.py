"""The bad-input sweep: one table row per bad input, with the exception (Python API) or the exit code 2 and one
``error:`` line (CLI) it must give. Classes: corrupt or foreign files, metadata schema, shapes against metadata,
non-finite values, layer indices against the model, provenance, duplicates, position rules, checksums, allocation
bounds, degenerate data (too few, constant prompts; collapsed maps; zero converters), context length, output paths,
option values, disk full; plus file modes under the umask and ``--debug`` keeping the traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import assert_one_error_line, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.access.limits import check_fits_context
from commandv_interp.app import cli
from commandv_interp.converters.artifact import LinearConverter
from commandv_interp.io import (DegenerateDataWarning, atomic_write, read_safetensors, tensors_checksum, write_json,
                                write_safetensors)
from commandv_interp.prompts import load_prompts

runner = CliRunner()


# ---------------------------------------------------------------- shared artifacts


@pytest.fixture(scope="module")
def w(tmp_path_factory, nn_llama, nn_gpt2, tiny_dir):
    """Good artifacts on the tiny models (donor Llama d=32 L=4, recipient GPT-2 d=24 L=3, 64 positions each)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    prompts = random_prompts(16, seed=3)
    donor = cv.profile(nn_llama, prompts, progress=False)
    recipient = cv.profile(nn_gpt2, prompts, progress=False)
    layer_map = cv.match_layers(donor, recipient, method="depth")
    conv = cv.fit_converters(donor, recipient, layer_map, method="ridge")
    adapter = random_adapter(32, layers=(0, 2))
    few = random_prompts(2, seed=4)
    with pytest.warns(DegenerateDataWarning):
        few_donor, few_recipient = (cv.profile(m, few, progress=False) for m in (nn_llama, nn_gpt2))
    paths = SimpleNamespace(root=root)
    for name, obj in (("donor", donor), ("recipient", recipient), ("few_donor", few_donor),
                      ("few_recipient", few_recipient), ("conv", conv)):
        setattr(paths, name, obj.save(root / f"{name}.safetensors"))
    paths.map = layer_map.save(root / "map.json")
    paths.adapter = cv.save_adapter(adapter, root / "adapter")
    paths.first_last = cv.save_adapter(replace(adapter, positions="first_last", first_last_k=2), root / "first_last")
    (root / "prompts.txt").write_text("\n".join(prompts))
    (root / "long.txt").write_text(" ".join(["w5"] * 70) + "\n" + prompts[0])
    (root / "near.txt").write_text(" ".join(["w5"] * 40))
    (root / "few.txt").write_text("\n".join(prompts[:5]))
    (root / "zoo_long.txt").write_text(" ".join(["user"] * 200))
    (root / "text.txt").write_text("just some text, not tensors\n")
    (root / "empty.bin").write_bytes(b"")
    data = paths.donor.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "folder").mkdir()
    (root / "a_file").write_text("x")
    save_file({"x": torch.zeros(2)}, str(root / "list_meta.safetensors"), metadata={"commandv": "[1, 2]"})
    return SimpleNamespace(p=paths, prompts=prompts, donor=donor, recipient=recipient, layer_map=layer_map,
                           conv=conv, adapter=adapter, llama=nn_llama, gpt2=nn_gpt2, tiny=tiny_dir, root=root)


def _craft_profile(w, path: Path, edit: Callable[[dict, dict], None], checksum: bool = True) -> Path:
    """A profile file with the good one's tensors and metadata, after ``edit(meta, tensors)``; checksum recomputed."""
    meta, tensors = read_safetensors(w.p.donor, "activation profile", "commandv.activation_profile")
    edit(meta, tensors)
    meta["checksum"] = tensors_checksum(tensors, meta) if checksum else meta["checksum"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"commandv": json.dumps(meta)})
    return path


def _zeroed_bytes(src: Path, dst: Path) -> Path:
    """``src`` with the last 64 bytes of tensor data zeroed (same size, valid header)."""
    data = bytearray(src.read_bytes())
    data[-64:] = bytes(64)
    dst.write_bytes(bytes(data))
    return dst


def _header_claims(path: Path, n: int) -> Path:
    path.write_bytes(n.to_bytes(8, "little") + b"{}")
    return path


def _big_shape(path: Path) -> Path:
    header = json.dumps({"__metadata__": {"commandv": json.dumps({"kind": "commandv.activation_profile"})},
                         "layer.0": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    return path


def _layer_map_dict(w, **changes) -> dict:
    d = w.layer_map.to_dict()
    d.update(changes)
    return d


def _map_file(w, name: str, **changes) -> Path:
    path = w.root / f"{name}.json"
    path.write_text(json.dumps(_layer_map_dict(w, **changes)))
    return path


def _adapter_with_config(w, name: str, edit: Callable[[dict], None]) -> Path:
    folder = w.root / name
    if not folder.exists():
        shutil.copytree(w.p.adapter, folder)
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _adapter_with_meta(w, name: str, meta: dict) -> Path:
    folder = w.root / name
    if not folder.exists():
        shutil.copytree(w.p.adapter, folder)
        old = json.loads((folder / cv.adapters.pyreft_format.META_FILE).read_text())
        (folder / cv.adapters.pyreft_format.META_FILE).write_text(json.dumps(old | meta))
    return folder


def _stride0_adapter(w) -> Path:
    """A few-kB folder whose .bin holds views of one element expanded to 4 x 30000 (stride 0)."""
    folder = w.root / "stride0"
    if folder.exists():
        return folder
    folder.mkdir()
    d, r = 30000, 4
    one = torch.zeros(1)
    state = OrderedDict([("embed_dim", torch.tensor(d)), ("interchange_dim", torch.tensor(d)),
                         ("proj_layer.weight", one.expand(r, d)), ("proj_layer.bias", one.expand(r)),
                         ("learned_source.weight", one.expand(r, d)), ("learned_source.bias", one.expand(r))])
    key = "layer_0_comp_block_output_unit_pos_nunit_1#0"
    torch.save(state, folder / f"intkey_{key}.bin")
    config = {"sorted_keys": [key], "intervention_types": ["<class 'pyreft.interventions.NodireftIntervention'>"],
              "representations": [[0, "block_output", "pos", 1, r]], "intervention_dimensions": [d]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _profile_of(w, value: float) -> cv.ActivationProfile:
    """The donor profile with every entry set to ``value``."""
    return replace(w.donor, activations={layer: torch.full_like(a, value) for layer, a in w.donor.activations.items()})


def _conv_with(w, **pair_changes) -> cv.Converters:
    pair = w.conv.pairs[0]
    return replace(w.conv, pairs=(replace(pair, **pair_changes),) + w.conv.pairs[1:])


def _identical(w):
    prompts = [w.prompts[0]] * 16
    with pytest.warns(DegenerateDataWarning, match="constant"):
        return (cv.profile(w.llama, prompts, progress=False), cv.profile(w.gpt2, prompts, progress=False))


def _collapsing(w):
    """Profiles whose every layer is the same matrix: all similarities equal."""
    base = w.donor[0][:, :24]
    return (replace(w.donor, activations={k: w.donor[0].clone() for k in w.donor.layers}),
            replace(w.recipient, activations={k: base.clone() for k in w.recipient.layers}))


def _disk_full(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------- the Python API table


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[SimpleNamespace], object]
    error: type[Exception]
    match: str


API_ROWS = [
    # files: foreign, empty, truncated, folders, missing
    Row("profile-text-file", lambda w: cv.ActivationProfile.load(w.root / "text.txt"), ValueError,
        "not a safetensors file"),
    Row("profile-0-bytes", lambda w: cv.ActivationProfile.load(w.root / "empty.bin"), ValueError, "0 bytes"),
    Row("profile-truncated", lambda w: cv.ActivationProfile.load(w.root / "truncated.safetensors"), ValueError,
        "truncated"),
    Row("profile-folder", lambda w: cv.ActivationProfile.load(w.root / "folder"), ValueError, "is a folder"),
    Row("profile-missing", lambda w: cv.ActivationProfile.load(w.root / "nope.safetensors"), FileNotFoundError,
        "does not exist"),
    Row("profile-metadata-list", lambda w: cv.ActivationProfile.load(w.root / "list_meta.safetensors"), ValueError,
        "a list commandv metadata"),
    Row("profile-is-converters", lambda w: cv.ActivationProfile.load(w.p.conv), ValueError,
        "kind='commandv.converters'"),
    Row("profile-header-past-end", lambda w: cv.ActivationProfile.load(_header_claims(w.root / "h.safetensors", 10**9)),
        ValueError, "header of 1000000000 bytes"),
    Row("profile-shape-past-end", lambda w: cv.ActivationProfile.load(_big_shape(w.root / "big.safetensors")),
        ValueError, "needs 40000000000 bytes"),
    # checksum
    Row("profile-zeroed-bytes", lambda w: cv.ActivationProfile.load(_zeroed_bytes(w.p.donor, w.root / "z.safetensors")),
        ValueError, "corrupted"),
    Row("converters-zeroed-bytes", lambda w: cv.Converters.load(_zeroed_bytes(w.p.conv, w.root / "zc.safetensors")),
        ValueError, "corrupted"),
    # metadata schema and shapes against metadata
    Row("profile-d_model-string", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "s.safetensors", lambda m, t: m.update(d_model="32"))), ValueError,
        "'d_model' must be int, got '32'"),
    Row("profile-missing-field", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "mf.safetensors", lambda m, t: m.pop("config_hash"))), ValueError, "lacks field 'config_hash'"),
    Row("profile-width-vs-metadata", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "wd.safetensors", lambda m, t: m.update(d_model=31))), ValueError, "d_model=31"),
    Row("profile-layer-beyond-n_layers", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "l9.safetensors", lambda m, t: t.update({"layer.9": t["layer.0"].clone()}))), ValueError,
        "layers [9] outside 0..3"),
    Row("profile-n_prompts-vs-rows", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "np.safetensors", lambda m, t: m.update(n_prompts=99))), ValueError, "n_prompts=99"),
    Row("profile-nan-in-file", lambda w: cv.ActivationProfile.load(_craft_profile(
        w, w.root / "nan.safetensors", lambda m, t: t["layer.0"].fill_(float("nan")))), ValueError, "NaN/inf"),
    Row("profile-bad-position-rule", lambda w: replace(w.donor, position_rule="middle"), ValueError, "position_rule"),
    Row("profile-nan-constructed", lambda w: _profile_of(w, value=float("inf")), ValueError, "NaN/inf"),
    # context length: refused before any model runs, naming the prompt and the limit
    Row("profile-beyond-context", lambda w: cv.profile(w.llama, [" ".join(["w7"] * 80)], progress=False), ValueError,
        "(81 tokens) exceeds the 64 positions of 'tiny-llama'"),
    Row("generate-overflow", lambda w: check_fits_context(w.gpt2, w.gpt2.encode([" ".join(["w7"] * 40)]), 32),
        ValueError, "(41 tokens, padded to 41) + 32 new tokens = 73 exceeds the 64 positions"),
    Row("context-no-prompts", lambda w: check_fits_context(w.gpt2, []), ValueError, "no prompts"),
    Row("profile-no-prompts", lambda w: cv.profile(w.llama, [], progress=False), ValueError, "non-empty"),
    # degenerate data, refused at the step that creates it
    Row("match-similarity-2-prompts", lambda w: cv.match_layers(cv.ActivationProfile.load(w.p.few_donor),
                                                                cv.ActivationProfile.load(w.p.few_recipient),
                                                                method="similarity"), ValueError, "at least 3"),
    Row("match-identical-prompts", lambda w: cv.match_layers(*_identical(w), method="similarity"), ValueError,
        "constant across its 16 prompts at layer 0"),
    Row("fit-2-prompts", lambda w: cv.fit_converters(cv.ActivationProfile.load(w.p.few_donor),
                                                     cv.ActivationProfile.load(w.p.few_recipient), w.layer_map),
        ValueError, "needs at least 3"),
    Row("fit-interface-fewer-than-rank", lambda w: cv.fit_converters(
        w.donor.subset(range(6)), w.recipient.subset(range(6)), w.layer_map, "interface",
        random_adapter(32, layers=(0, 2), rank=8)), ValueError, "more than the adapter's rank 8"),
    Row("fit-ridge-grid-nan", lambda w: cv.fit_converters(w.donor, w.recipient, w.layer_map, "ridge",
                                                          ridge_grid=(float("nan"),)), ValueError, "ridge_grid"),
    Row("fit-ridge-grid-negative", lambda w: cv.fit_converters(w.donor, w.recipient, w.layer_map, "ridge",
                                                               ridge_grid=(-1.0,)), ValueError, "ridge_grid"),
    Row("fit-ridge-grid-empty", lambda w: cv.fit_converters(w.donor, w.recipient, w.layer_map, "ridge",
                                                            ridge_grid=()), ValueError, "ridge_grid"),
    # provenance: objects from another model pair
    Row("fit-map-of-other-pair", lambda w: cv.fit_converters(w.donor, w.recipient, replace(
        w.layer_map, donor_model="other-model"), "ridge"), ValueError, "layer map's donor is 'other-model'"),
    Row("fit-map-other-config-hash", lambda w: cv.fit_converters(w.donor, w.recipient, replace(
        w.layer_map, extra={"recipient_config_hash": "0" * 16}), "ridge"), ValueError, "layer map's recipient"),
    Row("fit-map-layer-beyond-model", lambda w: cv.fit_converters(w.donor, w.recipient, replace(
        w.layer_map, pairs=((0, 17),), scores=(0.0,)), "ridge"), ValueError, "names recipient layers [17]"),
    Row("fit-profiles-other-prompts", lambda w: cv.fit_converters(w.donor, w.recipient.subset(range(16)),
                                                                  w.layer_map), ValueError, "different prompts"),
    Row("converters-vs-recipient-layer-17", lambda w: _conv_with(w, recipient_layer=17).check_recipient(w.gpt2),
        ValueError, "converters name recipient layer 17 but their recipient has 3 layers"),
    Row("converters-vs-other-adapter-width", lambda w: w.conv.check_adapter(random_adapter(24)), ValueError,
        "d_model=24"),
    Row("converters-vs-other-profiles", lambda w: w.conv.check_profiles(replace(w.donor, config_hash="f" * 16),
                                                                        w.recipient), ValueError, "config hash"),
    # converters: non-finite, shapes, duplicates
    Row("converters-nan-weight", lambda w: _conv_with(w, to_recipient=LinearConverter(
        torch.full((24, 32), float("nan")))), ValueError, "NaN/inf"),
    Row("converters-wrong-width", lambda w: _conv_with(w, to_recipient=LinearConverter(torch.ones(24, 31))),
        ValueError, "metadata says 32 to 24"),
    Row("converters-duplicate-donor-layer", lambda w: replace(w.conv, pairs=w.conv.pairs[:1] * 2), ValueError,
        "donor layer 0 twice"),
    Row("converters-unknown-method", lambda w: replace(w.conv, method="magic"), ValueError, "method='magic'"),
    Row("converters-chain-alpha-nan", lambda w: replace(w.conv, chain_alpha=float("nan")), ValueError, "chain_alpha"),
    Row("converters-text-file", lambda w: cv.Converters.load(w.root / "text.txt"), ValueError, "not a safetensors"),
    Row("converters-0-bytes", lambda w: cv.Converters.load(w.root / "empty.bin"), ValueError, "0 bytes"),
    Row("converters-metadata-list", lambda w: cv.Converters.load(w.root / "list_meta.safetensors"), ValueError,
        "a list commandv metadata"),
    Row("converters-is-profile", lambda w: cv.Converters.load(w.p.donor), ValueError,
        "not a commandv converters file (kind='commandv.activation_profile'"),
    # layer maps
    Row("map-is-list", lambda w: cv.LayerMap.from_dict([[0, 0]]), ValueError, "JSON object, got a list"),
    Row("map-null-pair", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, pairs=[None, [1, 1]])), ValueError,
        "pair 0 is None"),
    Row("map-nested-pair", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, pairs=[[[0, 1], 2]])), ValueError,
        "pair 0 is [[0, 1], 2]"),
    Row("map-triple-pair", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, pairs=[[0, 1, 2]])), ValueError,
        "pair 0 is [0, 1, 2]"),
    Row("map-negative-layer", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, pairs=[[-1, 0]])), ValueError,
        "ints >= 0"),
    Row("map-duplicate-donor", lambda w: cv.LayerMap.from_dict(_layer_map_dict(
        w, pairs=[[0, 0], [0, 1]], scores=[None, None])), ValueError, "donor layers [0] more than once"),
    Row("map-scores-length", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, scores=[0.1])), ValueError,
        "scores"),
    Row("map-missing-field", lambda w: cv.LayerMap.from_dict({k: v for k, v in _layer_map_dict(w).items()
                                                              if k != "scores"}), ValueError, "lacks field 'scores'"),
    Row("map-method-not-a-name", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, method=3)), ValueError,
        "'method' must be str, got 3"),
    Row("map-ragged-similarity", lambda w: cv.LayerMap.from_dict(_layer_map_dict(w, similarity=[[1.0], [1.0, 2.0]])),
        ValueError, "similarity must be a matrix"),
    Row("map-invalid-json", lambda w: cv.LayerMap.load(w.root / "text.txt"), ValueError, "not valid JSON"),
    Row("map-not-utf8", lambda w: cv.LayerMap.load(_bytes(w.root / "latin.json", b"\xff\xfe{")), ValueError,
        "not UTF-8"),
    Row("map-folder", lambda w: cv.LayerMap.load(w.root / "folder"), ValueError, "is a folder"),
    # adapters: config types, allocation, non-finite weights, positions, model
    Row("adapter-dims-null", lambda w: cv.load_adapter(_adapter_with_config(
        w, "dims_null", lambda c: c.update(intervention_dimensions=[None, None]))), ValueError,
        "intervention_dimensions holds None"),
    Row("adapter-dims-list", lambda w: cv.load_adapter(_adapter_with_config(
        w, "dims_list", lambda c: c.update(intervention_dimensions=[[32], [32]]))), ValueError,
        "intervention_dimensions holds [32]"),
    Row("adapter-rank-list", lambda w: cv.load_adapter(_adapter_with_config(
        w, "rank_list", lambda c: [r.__setitem__(4, [4]) for r in c["representations"]])), ValueError,
        "low_rank_dimension"),
    Row("adapter-stride-0-bin", lambda w: cv.load_adapter(_stride0_adapter(w)), ValueError, "stride"),
    Row("adapter-bad-positions-meta", lambda w: cv.load_adapter(_adapter_with_meta(w, "pos_meta", {"positions": 3})),
        ValueError, "positions 3"),
    Row("adapter-unknown-positions-meta", lambda w: cv.load_adapter(_adapter_with_meta(
        w, "pos_name", {"positions": "middle"})), ValueError, "positions"),
    Row("adapter-folder-is-file", lambda w: cv.load_adapter(w.root / "a_file"), ValueError, "is a file"),
    Row("adapter-nan-weights", lambda w: cv.Adapter({0: _nan_intervention()}), ValueError, "NaN/inf"),
    Row("adapter-first_last-at-last", lambda w: cv.load_adapter(w.p.first_last).check_positions("last"), ValueError,
        "trained at positions 'first_last' (k=2) but is used at 'last'"),
    Row("adapter-other-width", lambda w: w.adapter.check_model("tiny-gpt2", 3, 24), ValueError, "d_model=24"),
    Row("adapter-layer-beyond-model", lambda w: w.adapter.check_model("m", 2, 32), ValueError, "layers [2]"),
    Row("compile-alpha-nan", lambda w: cv.compile_paste(w.adapter, w.conv, alpha=float("nan")), ValueError,
        "NaN|alpha"),
    # prompts files
    Row("prompts-not-utf8", lambda w: load_prompts(_bytes(w.root / "latin.txt", b"caf\xe9\n")), ValueError,
        "latin.txt' is not UTF-8"),
    Row("prompts-invalid-json", lambda w: load_prompts(_bytes(w.root / "p.json", b"[\"a\", ")), ValueError,
        "p.json' line 1 is not valid JSON"),
    Row("prompts-invalid-jsonl-line", lambda w: load_prompts(_bytes(w.root / "p.jsonl", b"\"a\"\n{oops\n")),
        ValueError, "line 2 is not valid JSON"),
    Row("prompts-empty-entry", lambda w: load_prompts(_bytes(w.root / "e.json", b"[\"a\", \"  \"]")), ValueError,
        "entry 1 is an empty prompt"),
    Row("prompts-folder", lambda w: load_prompts(w.root / "folder"), ValueError, "is a folder"),
    # writing: folders, files as parents, NaN, disk full
    Row("write-to-folder", lambda w: w.donor.save(w.root / "folder"), ValueError, "is a folder"),
    Row("write-under-file", lambda w: w.donor.save(w.root / "a_file" / "p.safetensors"), ValueError,
        "is a file, not a folder"),
    Row("write-safetensors-inf", lambda w: write_safetensors(w.root / "i.safetensors",
                                                              {"x": torch.tensor([float("inf")])},
                                                              {"kind": "k"}, "thing"), ValueError, "NaN/inf"),
    Row("write-disk-full", lambda w: atomic_write(w.root / "full.txt", _disk_full), OSError, "cannot write"),
]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nan_intervention():
    from commandv_interp.adapters import make_intervention

    iv = make_intervention("nodireft", 8, 2)
    with torch.no_grad():
        iv.proj_layer.weight.fill_(float("nan"))
    return iv


@pytest.mark.parametrize("row", API_ROWS, ids=[r.id for r in API_ROWS])
def test_api_refuses(row: Row, w):
    with pytest.raises(row.error) as info:
        row.call(w)
    assert re.search(row.match if "|" in row.match else re.escape(row.match), str(info.value)), str(info.value)


WARN_ROWS = [
    Row("match-collapsed-similarity", lambda w: cv.match_layers(*_collapsing(w), method="similarity"),
        DegenerateDataWarning, "collapses onto one recipient layer"),
    Row("profile-identical-prompts", lambda w: cv.profile(w.llama, [w.prompts[0]] * 16, progress=False),
        DegenerateDataWarning, "constant across its 16 prompts"),
    Row("profile-2-prompts", lambda w: cv.profile(w.llama, w.prompts[:2], progress=False), DegenerateDataWarning,
        "needs at least 3"),
    Row("profile-duplicate-prompts", lambda w: cv.profile(w.llama, w.prompts[:8] + w.prompts[:2], progress=False),
        DegenerateDataWarning, "2 duplicate rows"),
    Row("converters-all-zero", lambda w: _conv_with(w, to_recipient=LinearConverter(torch.zeros(24, 32))),
        DegenerateDataWarning, "all zero"),
    Row("fit-constant-profiles", lambda w: cv.fit_converters(
        _profile_of(w, value=1.0), replace(w.recipient, activations={
            k: torch.ones_like(v) for k, v in w.recipient.activations.items()}), w.layer_map, "ridge"),
        DegenerateDataWarning, "constant"),
]


@pytest.mark.parametrize("row", WARN_ROWS, ids=[r.id for r in WARN_ROWS])
def test_api_warns(row: Row, w):
    with pytest.warns(row.error, match=row.match):
        try:
            row.call(w)
        except ValueError:
            pass  # a later step may refuse too; the warning must come first


# ---------------------------------------------------------------- the CLI table


@dataclass(frozen=True)
class CliRow:
    id: str
    args: Callable[[SimpleNamespace], list]
    match: str
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def _paste(w, *extra, prompts=None, recipient=None):
    return ["paste", recipient or w.tiny / "gpt2", w.p.adapter, w.p.conv, prompts or w.root / "prompts.txt",
            "--out", w.root / "g.jsonl", *extra]


def _compile(w, *extra, adapter=None, out=None):
    return ["compile", adapter or w.p.adapter, w.p.conv, "--out", out or w.root / "native", *extra]


def _match(w, donor=None, out=None, *extra):
    return ["match", donor or w.p.donor, w.p.recipient, "--out", out or w.root / "m.json", *extra]


def _derive(w, *extra, map_file=None, out=None, donor=None, recipient=None):
    return ["derive", donor or w.p.donor, recipient or w.p.recipient, "--map", map_file or w.p.map,
            "--out", out or w.root / "c.safetensors", *extra]


CLI_ROWS = [
    # profile
    CliRow("profile-prompts-missing", lambda w: ["profile", w.tiny / "llama", w.root / "none.txt", "--out",
                                                 w.root / "p.safetensors"], "does not exist"),
    CliRow("profile-prompts-folder", lambda w: ["profile", w.tiny / "llama", w.root / "folder", "--out",
                                                w.root / "p.safetensors"], "is a folder"),
    CliRow("profile-beyond-context-zoo", lambda w: ["profile", "gpt2-4x96", w.root / "zoo_long.txt", "--out",
                                                    w.root / "p.safetensors"], "exceeds the 128 positions"),
    CliRow("profile-beyond-context-tiny", lambda w: ["profile", w.tiny / "llama", w.root / "long.txt", "--out",
                                                     w.root / "p.safetensors"], "prompt 0 'w5 w5"),
    CliRow("profile-out-folder", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                            w.root / "folder"], "--out"),
    CliRow("profile-out-empty", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out", ""],
           "(the current folder) is a folder"),  # click turns "" into Path("."), the current folder
    CliRow("profile-out-is-prompts", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                                w.root / "prompts.txt"], "also an input"),
    CliRow("profile-batch-size-0", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                              w.root / "p.safetensors", "--batch-size", "0"], "--batch-size"),
    CliRow("profile-bad-layers", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                            w.root / "p.safetensors", "--layers", "0,x"], "--layers"),
    CliRow("profile-layer-out-of-range", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                                    w.root / "p.safetensors", "--layers", "9"], "out of range"),
    CliRow("profile-unknown-backend", lambda w: ["profile", w.tiny / "llama", w.root / "prompts.txt", "--out",
                                                 w.root / "p.safetensors", "--backend", "jax"], "--backend"),
    # match
    CliRow("match-text-file", lambda w: _match(w, w.root / "text.txt"), "not a safetensors file"),
    CliRow("match-0-bytes", lambda w: _match(w, w.root / "empty.bin"), "0 bytes"),
    CliRow("match-truncated", lambda w: _match(w, w.root / "truncated.safetensors"), "truncated"),
    CliRow("match-metadata-list", lambda w: _match(w, w.root / "list_meta.safetensors"), "metadata"),
    CliRow("match-folder-as-profile", lambda w: _match(w, w.root / "folder"), "is a folder, not a file"),
    CliRow("match-out-folder", lambda w: _match(w, None, w.root / "folder"), "is a folder"),
    CliRow("match-out-under-file", lambda w: _match(w, None, w.root / "a_file" / "m.json"), "is a file, not a folder"),
    CliRow("match-out-is-input", lambda w: _match(w, None, w.p.donor), "also an input"),
    CliRow("match-similarity-2-prompts", lambda w: ["match", w.p.few_donor, w.p.few_recipient, "--out",
                                                    w.root / "m.json", "--method", "similarity"], "at least 3"),
    CliRow("match-unknown-metric", lambda w: _match(w, None, None, "--metric", "cosine"), "--metric"),
    CliRow("match-disk-full", lambda w: _match(w, None, w.root / "full.json"), "cannot write",
           lambda mp: mp.setattr("commandv_interp.io.os.replace", lambda a, b: _disk_full(a))),
    # derive
    CliRow("derive-map-null-pairs", lambda w: _derive(w, map_file=_map_file(w, "nullpairs", pairs=[None])),
           "pair 0 is None"),
    CliRow("derive-map-triple", lambda w: _derive(w, map_file=_map_file(w, "triple", pairs=[[0, 1, 2]])),
           "pair 0 is [0, 1, 2]"),
    CliRow("derive-map-other-pair", lambda w: _derive(w, map_file=_map_file(w, "other", donor_model="other")),
           "layer map's donor is 'other'"),
    CliRow("derive-map-duplicate", lambda w: _derive(w, map_file=_map_file(w, "dup", pairs=[[0, 0], [0, 1]],
                                                                           scores=[None, None])), "more than once"),
    CliRow("derive-map-list", lambda w: _derive(w, map_file=_bytes(w.root / "list.json", b"[[0, 0]]")),
           "JSON object, got a list"),
    CliRow("derive-map-missing-option", lambda w: ["derive", w.p.donor, w.p.recipient, "--out",
                                                   w.root / "c.safetensors"], "--map"),
    CliRow("derive-out-is-map", lambda w: _derive(w, out=w.p.map), "also an input"),
    CliRow("derive-2-prompts", lambda w: _derive(w, donor=w.p.few_donor, recipient=w.p.few_recipient),
           "needs at least 3"),
    CliRow("derive-chain-alpha-nan", lambda w: _derive(w, "--method", "interface", "--adapter", w.p.adapter,
                                                       "--chain-alpha", "nan"), "--chain-alpha must be a finite"),
    CliRow("derive-profile-0-bytes", lambda w: _derive(w, donor=w.root / "empty.bin"), "0 bytes"),
    # paste
    CliRow("paste-prompt-plus-new-tokens", lambda w: _paste(w, "--max-new-tokens", "32", prompts=w.root / "near.txt"),
           "+ 32 new tokens = 73 exceeds the 64 positions"),
    CliRow("paste-prompt-beyond-context", lambda w: _paste(w, prompts=w.root / "long.txt"), "exceeds the 64 positions"),
    CliRow("paste-alpha-nan", lambda w: _paste(w, "--alpha", "nan"), "--alpha must be a finite"),
    CliRow("generate-donor-adapter-without-converters",
           lambda w: ["generate", w.tiny / "gpt2", w.root / "prompts.txt", "--edit", w.p.adapter, "--out",
                      w.root / "gen.jsonl"], "needs --converters"),
    CliRow("generate-prompt-beyond-context",
           lambda w: ["generate", w.tiny / "gpt2", w.root / "long.txt", "--edit", w.p.adapter, "--converters", w.p.conv,
                      "--out", w.root / "gen.jsonl"], "exceeds the 64 positions"),
    CliRow("paste-alpha-huge", lambda w: _paste(w, "--alpha", "1e30"), "--alpha must be a finite"),
    CliRow("paste-first_last-adapter-at-last", lambda w: ["paste", w.tiny / "gpt2", w.p.first_last, w.p.conv,
                                                          w.root / "prompts.txt", "--out", w.root / "g.jsonl"],
           "trained at positions 'first_last'"),
    CliRow("paste-converters-text", lambda w: ["paste", w.tiny / "gpt2", w.p.adapter, w.root / "text.txt",
                                               w.root / "prompts.txt", "--out", w.root / "g.jsonl"],
           "not a safetensors file"),
    CliRow("paste-converters-corrupted", lambda w: ["paste", w.tiny / "gpt2", w.p.adapter,
                                                    _zeroed_bytes(w.p.conv, w.root / "zc2.safetensors"),
                                                    w.root / "prompts.txt", "--out", w.root / "g.jsonl"], "corrupted"),
    CliRow("paste-other-recipient", lambda w: _paste(w, recipient=w.tiny / "llama"), "width 24"),
    CliRow("paste-out-folder", lambda w: ["paste", w.tiny / "gpt2", w.p.adapter, w.p.conv, w.root / "prompts.txt",
                                          "--out", w.root / "folder"], "is a folder"),
    CliRow("paste-out-is-prompts", lambda w: ["paste", w.tiny / "gpt2", w.p.adapter, w.p.conv, w.root / "prompts.txt",
                                              "--out", w.root / "prompts.txt"], "also an input"),
    CliRow("paste-stride-0-adapter", lambda w: ["paste", w.tiny / "gpt2", _stride0_adapter(w), w.p.conv,
                                                w.root / "prompts.txt", "--out", w.root / "g.jsonl"], "stride"),
    # compile
    CliRow("compile-alpha-nan", lambda w: _compile(w, "--alpha", "nan"), "--alpha must be a finite"),
    CliRow("compile-alpha-inf", lambda w: _compile(w, "--alpha", "inf"), "--alpha must be a finite"),
    CliRow("compile-alpha-1e30", lambda w: _compile(w, "--alpha", "1e30"), "within ±10000"),
    CliRow("compile-first_last-at-last", lambda w: _compile(w, adapter=w.p.first_last), "misses them"),
    CliRow("compile-out-is-file", lambda w: _compile(w, out=w.root / "a_file"), "is a file"),
    CliRow("compile-out-is-adapter", lambda w: _compile(w, out=w.p.adapter), "also an input"),
    CliRow("compile-out-not-adapter-folder", lambda w: _compile(w, out=_bytes_dir(w.root / "busy")),
           "is not an adapter folder"),
    CliRow("compile-adapter-dims-null", lambda w: _compile(w, adapter=_adapter_with_config(
        w, "dims_null", lambda c: c.update(intervention_dimensions=[None, None]))), "intervention_dimensions"),
    CliRow("compile-disk-full", lambda w: _compile(w, out=w.root / "full_native"), "cannot write adapter folder",
           lambda mp: mp.setattr("commandv_interp.adapters.pyreft_format.torch.save", lambda obj, f: _disk_full(f))),
    CliRow("compile-unknown-positions", lambda w: _compile(w, "--positions", "middle"), "--positions"),
    # zoo and demo
    CliRow("zoo-list-no-manifest", lambda w: ["zoo", "list", "--zoo-root", w.root / "folder"], "no zoo manifest"),
    CliRow("zoo-score-adapter-other-width", lambda w: ["zoo", "score", "gpt2-4x96", "refusal", "--adapter",
                                                       w.p.adapter, "--limit", "1"], "d_model=96"),
    CliRow("zoo-score-unknown-model", lambda w: ["zoo", "score", "no-such-model", "refusal", "--zoo-root",
                                                 _fake_zoo(w)], "unknown zoo model"),
    CliRow("zoo-train-out-file", lambda w: ["zoo", "train", "--quick", "--out", w.root / "a_file"], "is a file"),
    CliRow("zoo-train-duplicate-model", lambda w: ["zoo", "train", "--quick", "--out", w.root / "zt", "--model",
                                                   "gpt2-4x96", "--model", "gpt2-4x96"], "more than once"),
    CliRow("demo-out-file", lambda w: ["demo", "--out", w.root / "a_file"], "is a file"),
    CliRow("demo-alpha-nan", lambda w: ["demo", "--out", w.root / "demo", "--alpha", "nan"], "--alpha must be"),
    CliRow("demo-repeated-behavior", lambda w: ["demo", "--out", w.root / "demo", "--behavior", "refusal",
                                               "--behavior", "refusal"], "repeats"),
    CliRow("demo-unknown-method", lambda w: ["demo", "--out", w.root / "demo", "--method", "magic"], "--method"),
    # transfer, sweep, analyze
    CliRow("transfer-out-file", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                           w.root / "prompts.txt", "--out", w.root / "a_file"], "is a file"),
    CliRow("transfer-out-is-adapter", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                 w.root / "prompts.txt", "--out", w.p.adapter], "also an input"),
    CliRow("transfer-prompts-missing", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                  w.root / "none.txt", "--out", w.root / "t"], "does not exist"),
    CliRow("transfer-too-few-prompts", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                  w.root / "few.txt", "--out", w.root / "t"], "at least 16"),
    CliRow("transfer-limit-too-small", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                  w.root / "prompts.txt", "--out", w.root / "t", "--limit", "3"],
           "--limit"),
    CliRow("transfer-unknown-start", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                w.root / "prompts.txt", "--out", w.root / "t", "--start", "fresh"],
           "--start"),
    CliRow("transfer-negative-polish", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.adapter,
                                                  w.root / "prompts.txt", "--out", w.root / "t", "--polish-steps",
                                                  "-1"], "--polish-steps"),
    CliRow("transfer-first_last-adapter", lambda w: ["transfer", w.tiny / "llama", w.tiny / "gpt2", w.p.first_last,
                                                     w.root / "prompts.txt", "--out", w.root / "t"],
           "acts at the first and last 2 positions"),
    CliRow("sweep-study-missing", lambda w: ["sweep", w.root / "none.toml", "--out", w.root / "s"], "cannot read"),
    CliRow("sweep-study-not-toml", lambda w: ["sweep", w.root / "prompts.txt", "--out", w.root / "s"], "cannot read"),
    CliRow("sweep-unknown-model", lambda w: ["sweep", _study(w, 'pairs = [["x-1", "gpt2-4x96"]]\nbehaviors = '
                                                             '["refusal"]'), "--out", w.root / "s"], "not in the zoo"),
    CliRow("sweep-unknown-key", lambda w: ["sweep", _study(w, 'pairs = [["llama-6x128", "gpt2-4x96"]]\nbehaviors = '
                                                           '["refusal"]\ncolour = 1'), "--out", w.root / "s"],
           "unknown keys"),
    CliRow("sweep-out-file", lambda w: ["sweep", _study(w, 'pairs = [["llama-6x128", "gpt2-4x96"]]\nbehaviors = '
                                                        '["refusal"]'), "--out", w.root / "a_file"], "is a file"),
    CliRow("analyze-not-a-transfer", lambda w: ["analyze", w.root / "folder", w.tiny / "llama", w.tiny / "gpt2",
                                                w.root / "prompts.txt", "--out", w.root / "an"], "transfer.json"),
    CliRow("analyze-out-file", lambda w: ["analyze", w.root / "folder", w.tiny / "llama", w.tiny / "gpt2",
                                          w.root / "prompts.txt", "--out", w.root / "a_file"], "is a file"),
]


def _study(w, text: str) -> Path:
    path = w.root / f"study_{abs(hash(text))}.toml"
    path.write_text(text)
    return path


def _bytes_dir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    (path / "keep.txt").write_text("mine")
    return path


def _fake_zoo(w) -> Path:
    from test_cli import _fake_zoo as fake

    root = w.root / "fake_zoo"
    root.mkdir(exist_ok=True)
    return fake(root)


SUBCOMMANDS = {"profile", "match", "derive", "paste", "compile", "demo", "transfer", "sweep", "analyze", "zoo list",
               "zoo score", "zoo train", "generate"}


def test_every_subcommand_is_in_the_table():
    covered = {r.id.split("-")[0] if not r.id.startswith("zoo-") else "zoo " + r.id.split("-")[1] for r in CLI_ROWS}
    registered = ({c.name for c in cli.app.registered_commands}
                  | {f"zoo {c.name}" for c in cli.zoo_app.registered_commands})
    assert registered == SUBCOMMANDS and covered == SUBCOMMANDS


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli_user_error(row: CliRow, w, monkeypatch):
    if row.patch is not None:
        row.patch(monkeypatch)
    args = [str(a) for a in row.args(w)]
    before = {p: p.read_bytes() for p in w.root.iterdir() if p.is_file()}
    assert_one_error_line(runner.invoke(cli.app, args), row.match)
    assert {p: p.read_bytes() for p in before} == before  # no input was touched


def test_debug_keeps_the_traceback(w):
    with pytest.raises(ValueError, match="not a safetensors file"):
        runner.invoke(cli.app, [str(a) for a in _match(w, w.root / "text.txt", None, "--debug")],
                      catch_exceptions=False)


def test_written_files_and_folders_follow_the_umask(w, tmp_path):
    old = os.umask(0o022)
    try:
        profile_file = w.donor.save(tmp_path / "p.safetensors")
        folder = cv.save_adapter(w.adapter, tmp_path / "adapter")
        map_file = w.layer_map.save(tmp_path / "map.json")
        result = runner.invoke(cli.app, [str(a) for a in _compile(w, out=tmp_path / "native")])
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    for path in (profile_file, map_file, *folder.iterdir(), *(tmp_path / "native").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in (folder, tmp_path / "native"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_json_never_holds_nan(w):
    path = write_json(w.root / "n.json", {"x": [float("nan"), float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"x": [None, None, 1.0]}


def test_saved_artifacts_carry_a_checksum_and_round_trip(w):
    meta, _ = read_safetensors(w.p.conv, "converters file", "commandv.converters")
    assert len(meta["checksum"]) == 16
    loaded = cv.Converters.load(w.p.conv)
    assert all(torch.equal(a.to_recipient.left, b.to_recipient.left.float()) for a, b in zip(loaded, w.conv))
    assert cv.ActivationProfile.load(w.p.donor).prompts_fingerprint == w.donor.prompts_fingerprint
    assert cv.LayerMap.load(w.p.map).pairs == w.layer_map.pairs


def test_table_size():
    assert len(API_ROWS) + len(WARN_ROWS) + len(CLI_ROWS) >= 60
