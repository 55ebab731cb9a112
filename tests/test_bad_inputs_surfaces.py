"""The bad-input sweep of issue 31, as a table: outputs that would eat inputs (zoo specs included), non-empty
folders, study files, values (α, layers, sizes), context limits of prompt + answer, edited or truncated artifacts,
shuffled weights, malformed or malicious adapter ``.bin`` files, a missing chat template and failing writers.

Every CLI row asserts exit code 2, exactly one ``error:`` line, no traceback, and every input file byte-identical
afterwards (hashed before and after, recursively). API rows assert the exception and its message."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import assert_one_error_line, random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.app import cli
from commandv_interp.app.out_paths import mark_out, shipped_zoo_dir
from commandv_interp.converters import Converters, LayerConverter, LinearConverter

runner = CliRunner()
ZOO_ADAPTER = shipped_zoo_dir() / "llama-6x128" / "adapters" / "jailbreak"


def identity_converters(d: int, path: Path, rank: int = 4) -> Path:
    """Factored rank-``rank`` converters between two width-``d`` models, saved to ``path`` (a cheap compile input)."""
    left, right = torch.eye(d)[:, :rank].contiguous(), torch.eye(d)[:rank].contiguous()
    pair = LayerConverter(0, 0, LinearConverter(left, right), LinearConverter(left, right), {})
    conv = Converters((pair,), "pinv", "donor", "recipient", "0" * 16, "1" * 16, d, d, "f" * 16)
    return conv.save(path)


def _edit_meta(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """``src`` with its commandv metadata edited by ``edit`` (tensors and stored checksum kept)."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["commandv"])
    edit(meta)
    save_file(load_file(str(src)), str(dst), metadata={"commandv": json.dumps(meta)})
    return dst


def _bin_of(folder: Path) -> Path:
    return sorted(folder.glob("intkey_*.bin"))[0]


def _study(root: Path, name: str, extra: str) -> Path:
    path = root / "studies" / f"{name}.toml"
    path.write_text('pairs = [["llama-6x128", "gpt2-4x96"]]\nbehaviors = ["refusal"]\n' + extra + "\n")
    return path


@pytest.fixture(scope="module")
def s(tmp_path_factory, nn_llama, nn_gpt2, tiny_dir):
    """Inputs on the tiny models (donor Llama d=32 L=4, recipient GPT-2 d=24 L=3, 64 positions each)."""
    root = tmp_path_factory.mktemp("surfaces")
    prompts = random_prompts(16, seed=5)
    donor, recipient = (cv.profile(m, prompts, progress=False) for m in (nn_llama, nn_gpt2))
    layer_map = cv.match_layers(donor, recipient, method="depth")
    conv = cv.fit_converters(donor, recipient, layer_map, method="ridge")
    adapter = random_adapter(32, layers=(0, 2))
    p = SimpleNamespace(root=root, tiny=tiny_dir)
    p.donor, p.recipient = donor.save(root / "donor.safetensors"), recipient.save(root / "recipient.safetensors")
    p.map, p.conv = layer_map.save(root / "map.json"), conv.save(root / "conv.safetensors")
    p.adapter = cv.save_adapter(adapter, root / "adapter")
    p.compiled = cv.save_adapter(adapter, root / "chain" / "compiled")  # a first transfer's output, used as input
    (root / "prompts.txt").write_text("\n".join(prompts))
    (root / "long.txt").write_text("\n".join([" ".join(["w5"] * 70)] + prompts[:15]))
    (root / "near.txt").write_text("\n".join(prompts[:15] + [" ".join(["w5"] * 58)]))  # 59 tokens + 8 answer > 64
    (root / "userdir").mkdir()
    (root / "userdir" / "report.md").write_text("my notes\n")
    (root / "userdir" / "candidates.csv").write_text("mine,1\n")
    (root / "empty").mkdir()
    (root / "sweep_out").mkdir()
    mark_out(root / "sweep_out", "sweep")
    (root / "sweep_out" / "results.csv").write_text("a\n")
    (root / "studies").mkdir()
    (root / "inputs").mkdir()
    shutil.copy(p.conv, root / "inputs" / "conv.safetensors")
    p.no_checksum = _edit_meta(p.donor, root / "no_checksum.safetensors", lambda m: m.pop("checksum"))
    p.renamed = _edit_meta(p.donor, root / "renamed.safetensors", lambda m: m.update(model_name="other"))
    p.conv_edited = _edit_meta(p.conv, root / "conv_edited.safetensors",
                               lambda m: m.update(recipient_config_hash="0" * 16))
    data = p.donor.read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) - 100])
    _shuffled_gpt2(tiny_dir, root / "gpt2_shuffled")
    _bad_bins(p)
    _transfer_folder(p, adapter, conv)
    return p


def _shuffled_gpt2(tiny_dir: Path, out: Path) -> None:
    """The tiny GPT-2 with the same config and its embedding rows and first block's weights permuted."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_dir / "gpt2", out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [model.get_input_embeddings().weight, *model.transformer.h[0].parameters()]:
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=g)])
    model.save_pretrained(out)


def _bad_bins(p) -> None:
    p.narrow_bin = p.root / "narrow_bin"
    shutil.copytree(p.adapter, p.narrow_bin)
    state = torch.load(_bin_of(p.narrow_bin), weights_only=True)
    state["proj_layer.weight"] = torch.randn(4, 16)  # embed_dim stays 32
    torch.save(state, _bin_of(p.narrow_bin))
    p.evil_bin = p.root / "evil_bin"
    shutil.copytree(p.adapter, p.evil_bin)
    state = torch.load(_bin_of(p.evil_bin), weights_only=True)
    state["note"] = datetime.date(2020, 1, 1)  # an object a weights-only load refuses
    torch.save(state, _bin_of(p.evil_bin))


def _transfer_folder(p, adapter, conv) -> None:
    from commandv_interp.pipeline import Transfer, TransferConfig
    from commandv_interp.pipeline.fingerprints import Fingerprints, ModelFingerprint

    candidates = pd.DataFrame([{"candidate": "ridge/depth", "criterion": 0.5, "lift": 0.1, "n_scoring": 4}])
    models = [ModelFingerprint(conv.donor_model, conv.donor_config_hash, None),
              ModelFingerprint(conv.recipient_model, conv.recipient_config_hash, None)]
    p.transfer = Transfer(TransferConfig(), Fingerprints("-", 4, *models, adapter.digest()), adapter, adapter, conv,
                          "last", "ridge/depth", candidates).save(p.root / "transfer")


@dataclass(frozen=True)
class CliRow:
    id: str
    args: Callable[[SimpleNamespace], list]
    match: str
    chdir: str | None = None  # run from this folder under the fixture root
    forbid: str | None = None  # text the error line must not contain


def _tr(s, prompts="prompts.txt", adapter=None, out=None, donor=None, recipient=None):
    return ["transfer", donor or s.tiny / "llama", recipient or s.tiny / "gpt2", adapter or s.adapter,
            s.root / prompts, "--out", out if out is not None else s.root / "t_new"]


def _an(s, prompts="prompts.txt", out=None, folder=None):
    return ["analyze", folder or s.transfer, s.tiny / "llama", s.tiny / "gpt2", s.root / prompts, "--out",
            out if out is not None else s.root / "an_new"]


def _sweep(s, name, extra, out=None):
    return ["sweep", _study(s.root, name, extra), "--out", out if out is not None else s.root / "sw_new"]


def _paste(s, recipient=None, adapter=None, conv=None, out=None, *extra):
    return ["paste", recipient or s.tiny / "gpt2", adapter or s.adapter, conv or s.conv, s.root / "prompts.txt",
            "--out", out if out is not None else s.root / "g.jsonl", *extra]


def _compile(s, adapter=None, conv=None, out=None, *extra):
    return ["compile", adapter or s.adapter, conv or s.conv, "--out", out if out is not None else s.root / "native",
            *extra]


CLI_ROWS = [
    # outputs that would eat an input: equal, inside, containing; zoo specs resolved to the zoo folder
    CliRow("transfer-out-contains-input-adapter", lambda s: _tr(s, adapter=s.compiled, out=s.root / "chain"),
           "contains the input"),
    CliRow("transfer-out-inside-input-adapter", lambda s: _tr(s, out=s.adapter / "new"), "lies inside the input"),
    CliRow("transfer-out-contains-prompts", lambda s: _tr(s, out=s.root), "contains the input"),
    CliRow("transfer-out-inside-donor-checkpoint", lambda s: _tr(s, out=s.tiny / "llama" / "t"),
           "lies inside the input"),
    CliRow("transfer-out-user-folder", lambda s: _tr(s, out=s.root / "userdir"),
           "is not an earlier `commandv transfer` output"),
    CliRow("transfer-out-dot-slash", lambda s: _tr(s, out="./"), "(the current folder) is not empty", "userdir"),
    CliRow("transfer-out-dot", lambda s: _tr(s, out="."), "(the current folder) is not empty", "userdir"),
    CliRow("transfer-out-zoo-adapter", lambda s: _tr(s, adapter="zoo:llama-6x128:jailbreak", out=ZOO_ADAPTER),
           "is also an input of this command ('zoo:llama-6x128:jailbreak'"),
    CliRow("transfer-out-inside-zoo-donor", lambda s: _tr(s, donor="llama-6x128", out=ZOO_ADAPTER.parent / "new"),
           "lies inside the input 'llama-6x128'"),
    CliRow("compile-out-zoo-adapter", lambda s: _compile(s, "zoo:llama-6x128:jailbreak", None, ZOO_ADAPTER),
           "is also an input of this command ('zoo:llama-6x128:jailbreak'"),
    CliRow("compile-out-fake-zoo-adapter", lambda s: _compile(s, "zoo:llama-6x128:jailbreak", None,
                                                              _fake_zoo(s) / "llama-6x128" / "adapters" / "jailbreak",
                                                              "--zoo-root", _fake_zoo(s)), "is also an input"),
    CliRow("compile-out-contains-converters", lambda s: _compile(s, None, s.root / "inputs" / "conv.safetensors",
                                                                 s.root / "inputs"), "contains the input"),
    CliRow("compile-out-user-folder", lambda s: _compile(s, out=s.root / "userdir"), "is not an adapter folder"),
    CliRow("profile-out-inside-checkpoint", lambda s: ["profile", s.tiny / "llama", s.root / "prompts.txt", "--out",
                                                       s.tiny / "llama" / "p.safetensors"], "lies inside the input"),
    CliRow("profile-out-in-zoo", lambda s: ["profile", "llama-6x128", "zoo:refusal:profile", "--out",
                                            ZOO_ADAPTER.parents[1] / "p.safetensors"], "lies inside the input"),
    CliRow("derive-out-inside-adapter", lambda s: ["derive", s.donor, s.recipient, "--map", s.map, "--out",
                                                   s.adapter / "c.safetensors", "--method", "interface",
                                                   "--adapter", s.adapter], "lies inside the input"),
    CliRow("match-out-is-recipient", lambda s: ["match", s.donor, s.recipient, "--out", s.recipient],
           "is also an input"),
    CliRow("paste-out-inside-adapter", lambda s: _paste(s, out=s.adapter / "g.jsonl"), "lies inside the input"),
    CliRow("paste-out-in-zoo", lambda s: _paste(s, "gpt2-4x96", "zoo:llama-6x128:refusal", None,
                                                shipped_zoo_dir() / "gpt2-4x96" / "g.jsonl"),
           "lies inside the input 'gpt2-4x96'"),
    CliRow("analyze-out-is-transfer", lambda s: _an(s, out=s.transfer), "is also an input"),
    CliRow("analyze-out-inside-transfer", lambda s: _an(s, out=s.transfer / "analysis"), "lies inside the input"),
    CliRow("analyze-out-user-folder", lambda s: _an(s, out=s.root / "userdir"),
           "is not an earlier `commandv analyze` output"),
    CliRow("analyze-out-of-a-sweep", lambda s: _an(s, out=s.root / "sweep_out"),
           "is not an earlier `commandv analyze` output"),
    CliRow("sweep-out-contains-study", lambda s: _sweep(s, "ok", "", out=s.root / "studies"), "contains the input"),
    CliRow("sweep-out-user-folder", lambda s: _sweep(s, "ok", "", out=s.root / "userdir"),
           "is not an earlier `commandv sweep` output"),
    CliRow("demo-out-user-folder", lambda s: ["demo", "--out", s.root / "userdir"],
           "is not an earlier `commandv demo` output"),
    CliRow("demo-out-in-zoo", lambda s: ["demo", "--out", ZOO_ADAPTER.parents[1] / "demo"],
           "lies inside the input 'llama-6x128'"),
    CliRow("zoo-train-out-user-folder", lambda s: ["zoo", "train", "--quick", "--out", s.root / "userdir"],
           "is not an earlier `commandv zoo train` output"),
    # study files: the schema, before any work
    CliRow("sweep-limit-string", lambda s: _sweep(s, "limit_str", 'limit = "8"'), "limit = '8' is refused"),
    CliRow("sweep-limit-float", lambda s: _sweep(s, "limit_float", "limit = 2.5"), "limit = 2.5 is refused"),
    CliRow("sweep-profile-sizes-int", lambda s: _sweep(s, "sizes_int", "profile_sizes = 24"),
           "profile_sizes = 24 is refused"),
    CliRow("sweep-profile-sizes-negative", lambda s: _sweep(s, "sizes_neg", "profile_sizes = [-20]"),
           "profile_sizes entry 0 = -20 is refused"),
    CliRow("sweep-alphas-huge", lambda s: _sweep(s, "alpha_huge", "alphas = [1e30]"), "alphas entry 0 = 1e+30"),
    CliRow("sweep-alphas-nan", lambda s: _sweep(s, "alpha_nan", "alphas = [nan]"), "alphas entry 0 = nan"),
    CliRow("sweep-alphas-norm-factor-huge", lambda s: _sweep(s, "alpha_norm", 'alphas = ["norm*1e30"]'),
           "the factor must be a finite number within ±10000"),
    CliRow("sweep-behaviors-string", lambda s: ["sweep", _bytes(s.root / "studies" / "beh.toml",
                                                                b'pairs = [["llama-6x128", "gpt2-4x96"]]\n'
                                                                b'behaviors = "jailbreak"\n'), "--out",
                                                s.root / "sw_new"], "behaviors = 'jailbreak' is refused"),
    CliRow("sweep-pair-of-three", lambda s: ["sweep", _bytes(s.root / "studies" / "three.toml",
                                                             b'pairs = [["a", "b", "c"]]\nbehaviors = ["refusal"]\n'),
                                             "--out", s.root / "sw_new"], "pairs entry 0"),
    CliRow("sweep-n-boot-zero", lambda s: _sweep(s, "nboot", "n_boot = 0"), "n_boot = 0 is refused"),
    CliRow("sweep-methods-empty", lambda s: _sweep(s, "methods", "methods = []"), "methods is empty"),
    CliRow("sweep-seed-bool", lambda s: _sweep(s, "seed", "seed = true"), "seed = True is refused"),
    # values: one validation everywhere
    CliRow("profile-layers-repeated", lambda s: ["profile", s.tiny / "llama", s.root / "prompts.txt", "--out",
                                                 s.root / "p.safetensors", "--layers", "1,1,1"],
           "--layers names layer 1 more than once"),
    CliRow("profile-layers-empty", lambda s: ["profile", s.tiny / "llama", s.root / "prompts.txt", "--out",
                                              s.root / "p.safetensors", "--layers", ","], "--layers is empty"),
    CliRow("compile-alpha-negative-huge", lambda s: _compile(s, None, None, None, "--alpha", "-1e5"),
           "--alpha must be a finite number within ±10000"),
    CliRow("paste-alpha-inf", lambda s: _paste(s, None, None, None, None, "--alpha", "-inf"),
           "--alpha must be a finite number"),
    # context: prompt + the donor's answer, before any work, naming the prompt and the model
    CliRow("transfer-prompt-beyond-context", lambda s: _tr(s, "long.txt"),
           "prompt 0 'w5 w5", forbid="IndexError"),
    CliRow("transfer-prompt-plus-answer-beyond-context", lambda s: _tr(s, "near.txt"),
           "(59 tokens) + 8 new tokens = 67 exceeds the 64 positions of"),
    CliRow("analyze-prompt-beyond-context", lambda s: _an(s, "long.txt"), "exceeds the 64 positions of"),
    CliRow("analyze-prompt-plus-answer", lambda s: _an(s, "near.txt"), "+ 8 new tokens = 67 exceeds"),
    # edited, truncated or foreign artifacts
    CliRow("match-profile-without-checksum", lambda s: ["match", s.no_checksum, s.recipient, "--out",
                                                        s.root / "m.json"], "has no checksum"),
    CliRow("match-profile-metadata-edited", lambda s: ["match", s.renamed, s.recipient, "--out", s.root / "m.json"],
           "corrupted or edited"),
    CliRow("match-profile-truncated", lambda s: ["match", s.root / "cut.safetensors", s.recipient, "--out",
                                                 s.root / "m.json"], "is truncated: tensor", forbid="needs"),
    CliRow("paste-converters-metadata-edited", lambda s: _paste(s, conv=s.conv_edited), "corrupted or edited"),
    CliRow("paste-shuffled-recipient", lambda s: _paste(s, recipient=s.root / "gpt2_shuffled"), "other weights"),
    # adapter .bin files
    CliRow("paste-bin-narrower-than-embed-dim", lambda s: _paste(s, adapter=s.narrow_bin),
           "has shape (4, 16) but the state dict's embed_dim is 32"),
    CliRow("compile-bin-malicious", lambda s: _compile(s, adapter=s.evil_bin), "never unpickled",
           forbid="weights_only"),
    # chat template
    CliRow("profile-chat-template-missing", lambda s: ["profile", s.tiny / "llama", s.root / "prompts.txt", "--out",
                                                       s.root / "p.safetensors", "--chat-template"],
           "--chat-template: the tokenizer of", forbid="chat_template="),
    CliRow("paste-chat-template-missing", lambda s: _paste(s, None, None, None, None, "--chat-template"),
           "drop --chat-template", forbid="chat_template="),
]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fake_zoo(s) -> Path:
    from test_cli import _fake_zoo as fake

    root = s.root / "fakezoo"
    root.mkdir(exist_ok=True)
    fake(root)
    (root / "llama-6x128" / "adapters" / "jailbreak").mkdir(parents=True, exist_ok=True)
    return root


def _snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_table_size():
    assert len(CLI_ROWS) >= 40 and len({r.id for r in CLI_ROWS}) == len(CLI_ROWS)


def test_every_subcommand_that_writes_is_covered():
    covered = {r.id.split("-")[0] if not r.id.startswith("zoo-") else "zoo " + r.id.split("-")[1] for r in CLI_ROWS}
    assert {"transfer", "compile", "profile", "match", "derive", "paste", "analyze", "sweep", "demo",
            "zoo train"} <= covered


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli_refuses(row: CliRow, s, monkeypatch):
    if row.chdir is not None:
        monkeypatch.chdir(s.root / row.chdir)
    args = [str(a) for a in row.args(s)]
    before = _snapshot(s.root, s.tiny, ZOO_ADAPTER)
    assert_one_error_line(runner.invoke(cli.app, args), row.match, row.forbid)
    assert _snapshot(s.root, s.tiny, ZOO_ADAPTER) == before  # no input (nor anything else) was touched


def test_a_folder_command_recognizes_its_own_output(s, tmp_path):
    from commandv_interp.app.out_paths import OUT_MARKER, check_out

    study = _study(s.root, "own", "")
    assert check_out(tmp_path / "sw", [study], folder=True, command="sweep") == tmp_path / "sw"
    assert not (tmp_path / "sw").exists()  # the check writes nothing
    mark_out(tmp_path / "sw", "sweep")  # what run_zoo_study does once the study file is valid
    assert json.loads((tmp_path / "sw" / OUT_MARKER).read_text())["command"] == "sweep"
    (tmp_path / "sw" / "cells").mkdir()
    (tmp_path / "sw" / "cells" / "a.json").write_text("[]")  # a sweep interrupted midway: resumed
    assert check_out(tmp_path / "sw", [study], folder=True, command="sweep") == tmp_path / "sw"
    with pytest.raises(ValueError, match="not an earlier `commandv analyze` output"):
        check_out(tmp_path / "sw", [], folder=True, command="analyze")
    assert check_out(s.transfer, [s.adapter], folder=True, command="transfer") == s.transfer  # transfer.json's kind


# ---------------------------------------------------------------- the Python API: one validation everywhere


@dataclass(frozen=True)
class ApiRow:
    id: str
    call: Callable[[SimpleNamespace], object]
    error: type[Exception]
    match: str


def _study_of(**changes):
    from commandv_interp.analysis.study import Study

    return Study(**({"pairs": (("a", "b"),), "behaviors": ("refusal",)} | changes))


def _from_toml(s, extra: str, behaviors: str = 'behaviors = ["refusal"]'):
    from commandv_interp.analysis.study import Study

    path = s.root / "api_study.toml"
    path.write_text(f'pairs = [["a", "b"]]\n{behaviors}\n{extra}\n')
    return Study.from_toml(path)


API_ROWS = [
    ApiRow("paste-alpha-1e30", lambda s: cv.paste(s.gpt2, s.adapter_obj, s.conv_obj, alpha=1e30).__enter__(),
           ValueError, "alpha must be a finite number within ±10000"),
    ApiRow("apply-adapter-alpha-1e30", lambda s: cv.apply_adapter(s.llama, s.adapter_obj, alpha=1e30).__enter__(),
           ValueError, "alpha must be a finite number within ±10000"),
    ApiRow("compile-alpha-1e30", lambda s: cv.compile_paste(s.adapter_obj, s.conv_obj, alpha=1e30), ValueError,
           "within ±10000"),
    ApiRow("study-profile-size-negative", lambda s: _study_of(profile_sizes=(-20,)), ValueError,
           "profile_sizes entry must be an int >= 1, got -20"),
    ApiRow("study-alpha-huge", lambda s: _study_of(alphas=(1e30,)), ValueError, "study alpha must be a finite"),
    ApiRow("study-file-limit-string", lambda s: _from_toml(s, 'limit = "8"'), ValueError, "limit = '8' is refused"),
    ApiRow("study-file-behaviors-string", lambda s: _from_toml(s, "", 'behaviors = "jailbreak"'), ValueError,
           "behaviors = 'jailbreak' is refused"),
    ApiRow("profile-layers-repeated", lambda s: cv.profile(s.llama, ["w5 w6"] * 4, layers=[1, 1], progress=False),
           ValueError, "layers names layer 1 more than once"),
    ApiRow("compiled-adapter-on-shuffled-recipient", lambda s: cv.apply_adapter(
        s.shuffled, cv.compile_paste(s.adapter_obj, s.conv_obj)).__enter__(), ValueError, "(same config) has other "
        "weights"),
    ApiRow("trained-adapter-on-shuffled-model", lambda s: cv.apply_adapter(s.shuffled, s.trained).__enter__(),
           ValueError, "(same config) has other weights"),
    ApiRow("converters-shuffled-recipient", lambda s: s.conv_obj.check_recipient(s.shuffled), ValueError,
           "has other weights"),
]


@pytest.fixture(scope="module")
def api(s, nn_llama, nn_gpt2):
    examples = [(p, " w7") for p in random_prompts(4, seed=9)]
    trained, _ = cv.train_adapter(nn_gpt2, examples, layers=[0], rank=2, steps=1, progress=False)
    return SimpleNamespace(root=s.root, gpt2=nn_gpt2, llama=nn_llama, adapter_obj=cv.load_adapter(s.adapter),
                           conv_obj=cv.Converters.load(s.conv), shuffled=cv.open_model(s.root / "gpt2_shuffled"),
                           trained=trained)


@pytest.mark.parametrize("row", API_ROWS, ids=[r.id for r in API_ROWS])
def test_api_refuses(row: ApiRow, api):
    with pytest.raises(row.error, match=row.match.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        row.call(api)


def test_the_same_checkpoint_in_bf16_has_the_same_weights_digest(s, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from commandv_interp.access.fingerprint import weights_digest

    tok = AutoTokenizer.from_pretrained(tiny_dir / "gpt2")
    digests = {dtype: weights_digest(cv.open_model(AutoModelForCausalLM.from_pretrained(tiny_dir / "gpt2", dtype=dtype),
                                                   tok)) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    shuffled = weights_digest(cv.open_model(s.root / "gpt2_shuffled"))
    assert len(set(digests.values())) == 1 and shuffled not in digests.values()
