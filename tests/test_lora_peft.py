"""pipeline/to_peft.py: a recipient LoRA distilled from the donor+edit's answers, written as a PEFT folder that
peft alone loads (no commandv_interp import) with outputs equal to our application of it."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from conftest import assert_close, random_adapter, random_prompts

peft = pytest.importorskip("peft")

import commandv_interp as cv  # noqa: E402
from commandv_interp.adapters.edit import apply_edit, load_edit  # noqa: E402
from commandv_interp.pipeline.agreement import greedy_responses  # noqa: E402
from commandv_interp.pipeline.to_peft import to_peft  # noqa: E402

SIDE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, folder, ids, out = sys.argv[1:5]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder).eval()
ids = torch.tensor(eval(open(ids).read()))
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, out)
assert not any(name.startswith("commandv_interp") for name in sys.modules)
"""


def _distilled(nn_llama, nn_gpt2, folder):
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.8, seed=2)
    return to_peft(nn_llama, nn_gpt2, adapter, random_prompts(24, seed=6), folder, rank=4, max_steps=20, progress=False)


def test_distilled_lora_round_trips_through_peft(hf_gpt2, nn_llama, nn_gpt2, tmp_path):
    result = _distilled(nn_llama, nn_gpt2, tmp_path / "lora")
    assert result.losses[-1] < result.losses[0] and result.flops > 0
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == "tiny-gpt2"
    lora = load_edit(tmp_path / "lora")
    assert lora.layers == [0, 1, 2] and lora.modules.keys() == result.lora.modules.keys()
    assert all(torch.equal(lora.modules[n][1], result.lora.modules[n][1]) for n in lora.modules)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf_gpt2[0]), tmp_path / "lora").eval()
    batch = nn_gpt2.encode(random_prompts(3, seed=9, min_len=5, max_len=5))  # unpadded (GPT-2's position ids)
    with apply_edit(nn_gpt2, lora):
        ours = nn_gpt2.forward(batch)
    with torch.no_grad():
        assert_close(ours, loaded(input_ids=batch.input_ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours, hf_gpt2[0](input_ids=batch.input_ids).logits, atol=1e-4)


@pytest.mark.slow
def test_peft_alone_loads_it_without_commandv_interp(tiny_dir, nn_llama, nn_gpt2, tmp_path):
    _distilled(nn_llama, nn_gpt2, tmp_path / "lora")
    batch = nn_gpt2.encode(random_prompts(3, seed=9, min_len=5, max_len=5))
    with apply_edit(nn_gpt2, load_edit(tmp_path / "lora")):
        ours = nn_gpt2.forward(batch)
    (tmp_path / "ids.txt").write_text(repr(batch.input_ids.tolist()))
    run = subprocess.run([sys.executable, "-c", SIDE, str(tiny_dir / "gpt2"), str(tmp_path / "lora"),
                          str(tmp_path / "ids.txt"), str(tmp_path / "logits.pt")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert_close(ours, torch.load(tmp_path / "logits.pt", weights_only=True), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_transfer_to_peft_on_the_zoo_learns_the_donor_behavior(zoo_llama, zoo_gpt2, tmp_path):
    """Refusal moved from the Llama donor's ReFT adapter to the GPT-2 recipient as a LoRA, scored by the zoo."""
    from commandv_interp import zoo

    adapter = zoo.load_adapter("llama-6x128", "refusal")
    result = cv.transfer(zoo_llama, zoo_gpt2, adapter, zoo.prompts("refusal", "train")[:128], polish_steps=0,
                         progress=False)
    result.to_peft(tmp_path / "lora", zoo_llama, zoo.prompts("refusal", "train")[:256], progress=False)
    with apply_edit(zoo_gpt2, load_edit(tmp_path / "lora")):
        scored = zoo.evaluate(zoo_gpt2, "refusal", limit=40)
    plain = zoo.evaluate(zoo_gpt2, "refusal", limit=40)
    assert scored["refusal"] > plain["refusal"] + 0.5
