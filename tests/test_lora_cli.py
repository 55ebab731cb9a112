"""`commandv transfer` with a LoRA or steering-vector donor: the kind is recognized from the folder's contents and
named in one line; ``--as lora`` also writes a PEFT LoRA; bad folders exit 2 with one ``error:`` line."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import random_prompts

from commandv_interp.app import cli

peft = pytest.importorskip("peft")
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def _user_error(*args) -> str:
    result = _invoke(*args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "prompts.txt"
    path.write_text("\n".join(random_prompts(32, seed=17)) + "\n")
    return path


def _peft_folder(hf_model, folder, targets, **extra):
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False, **extra)
    peft.get_peft_model(copy.deepcopy(hf_model), config).save_pretrained(folder)
    return folder


def test_unknown_and_inconsistent_folders_exit_2(tiny_dir, hf_llama, hf_gpt2, prompts_file, tmp_path):
    donor, recipient = tiny_dir / "llama", tiny_dir / "gpt2"
    (tmp_path / "empty").mkdir()
    line = _user_error("transfer", donor, recipient, tmp_path / "empty", prompts_file, "--out", tmp_path / "o1")
    assert "holds neither adapter_config.json" in line
    folder = _peft_folder(hf_llama[0], tmp_path / "r", ["q_proj"])
    config = json.loads((folder / "adapter_config.json").read_text()) | {"r": 5}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    line = _user_error("transfer", donor, recipient, folder, prompts_file, "--out", tmp_path / "o2")
    assert "config says r=5" in line
    other = _peft_folder(hf_gpt2[0], tmp_path / "g", ["c_attn"], fan_in_fan_out=True)  # a LoRA of another model
    line = _user_error("transfer", donor, recipient, other, prompts_file, "--out", tmp_path / "o3")
    assert "this LoRA was trained on" in line and "gpt2" in line


@pytest.mark.slow  # a transfer plus an 80-step LoRA distillation: about 10 s
def test_steering_file_donor_transfers_and_writes_a_peft_lora(tiny_dir, prompts_file, tmp_path):
    torch.manual_seed(3)
    save_file({"1": 3.0 * torch.randn(32)}, str(tmp_path / "sv.safetensors"), metadata={"scale": "1.0"})
    result = _invoke("transfer", tiny_dir / "llama", tiny_dir / "gpt2", tmp_path / "sv.safetensors", prompts_file,
                     "--out", tmp_path / "out", "--polish-steps", "4", "--as", "lora")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines()[0] == "donor edit: steering vector, scale 1, layer 1"
    config = json.loads((tmp_path / "out" / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (tmp_path / "out" / "compiled").is_dir()
    meta = json.loads((tmp_path / "out" / "adapter" / "commandv_metadata.json").read_text())["metadata"]
    assert meta["surrogate_of"] == "steering" and [r["layer"] for r in meta["surrogate_fidelity"]] == [1]
