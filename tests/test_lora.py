"""adapters/lora.py: a PEFT LoRA folder applied by our hooks equals peft's PeftModel and the merged weights, token for
token; bad folders are refused with the field to fix; our writer round-trips through peft."""

import copy
import json

import pytest
import torch
from conftest import assert_close, random_prompts

peft = pytest.importorskip("peft")

from commandv_interp.adapters.edit import apply_edit, edit_kind, load_edit  # noqa: E402
from commandv_interp.adapters.lora import hf_model_of, load_peft_lora, save_peft_lora  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_folder(hf_model, folder, targets, rank=8, seed=0, **extra):
    """A LoRA with random A and B (init_lora_weights=False) on a copy of ``hf_model``, saved by peft itself."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False, **extra)
    model = peft.get_peft_model(copy.deepcopy(hf_model), config).eval()
    model.save_pretrained(folder)
    return model


def test_zoo_donor_lora_equals_peft_and_merged_token_for_token(zoo_llama, tmp_path):
    from commandv_interp import zoo

    hf = hf_model_of(zoo_llama)
    peft_model = _peft_folder(hf, tmp_path / "lora", LLAMA_TARGETS)
    lora = load_edit(tmp_path / "lora")
    assert edit_kind(tmp_path / "lora") == "lora" and lora.layers == list(range(6)) and lora.rank == 8
    batch = zoo_llama.encode(zoo.prompts("refusal", "test")[:6])
    plain = zoo_llama.generate_ids(batch, 24)
    with apply_edit(zoo_llama, lora):
        ours = zoo_llama.generate_ids(batch, 24)
        our_logits = zoo_llama.forward(batch)
    with torch.no_grad():
        ref_logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ref = peft_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=24,
                                  do_sample=False)[:, batch.input_ids.shape[1]:]
        merged = peft_model.merge_and_unload()
        ref_merged = merged.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     max_new_tokens=24, do_sample=False)[:, batch.input_ids.shape[1]:]
    assert not torch.equal(ours, plain)  # the LoRA changes the answers
    assert_close(our_logits, ref_logits, atol=2e-4, rtol=1e-5)  # float32 reassociation across 6 blocks
    assert torch.equal(ours, ref) and torch.equal(ours, ref_merged)
    assert torch.equal(zoo_llama.generate_ids(batch, 24), plain)  # hooks gone


def test_conv1d_lora_on_gpt2_equals_peft(hf_gpt2, nn_gpt2, tmp_path):
    peft_model = _peft_folder(hf_gpt2[0], tmp_path / "g", ["c_attn", "c_fc"], rank=4, fan_in_fan_out=True)
    batch = nn_gpt2.encode(random_prompts(5, seed=2, min_len=6, max_len=6))  # unpadded: HF GPT-2 alone has no
    # position ids from the mask, the access layer has
    with apply_edit(nn_gpt2, load_peft_lora(tmp_path / "g")):
        ours = nn_gpt2.forward(batch)
    with torch.no_grad():
        ref = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_our_writer_round_trips_through_peft(hf_llama, nn_llama, tmp_path):
    _peft_folder(hf_llama[0], tmp_path / "src", ["q_proj", "down_proj"], rank=4, use_rslora=True)
    lora = load_peft_lora(tmp_path / "src")
    save_peft_lora(lora, tmp_path / "ours")
    again = load_peft_lora(tmp_path / "ours")
    assert again.scaling == pytest.approx(lora.scaling) and again.modules.keys() == lora.modules.keys()
    for name in lora.modules:
        assert torch.equal(again.modules[name][0], lora.modules[name][0])
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf_llama[0]), tmp_path / "ours").eval()
    batch = nn_llama.encode(random_prompts(4, seed=5, min_len=6, max_len=6))
    with apply_edit(nn_llama, again):
        ours = nn_llama.forward(batch)
    with torch.no_grad():
        ref = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("change, message", [
    ({"r": 3}, "config says r=3"),
    ({"use_dora": True}, "use_dora=True is not supported"),
    ({"peft_type": "IA3"}, "not a PEFT LoRA folder"),
    ({"base_model_name_or_path": "org/other-model"}, "trained on 'org/other-model'"),
])
def test_bad_lora_folders_are_refused(hf_llama, nn_llama, tmp_path, change, message):
    _peft_folder(hf_llama[0], tmp_path / "bad", ["q_proj"], rank=4)
    _edit_config(tmp_path / "bad", **({"base_model_name_or_path": None} | change))
    with pytest.raises(ValueError, match=message):
        with apply_edit(nn_llama, load_edit(tmp_path / "bad")):
            pass


def test_lora_for_another_architecture_is_refused(hf_gpt2, nn_llama, tmp_path):
    _peft_folder(hf_gpt2[0], tmp_path / "g", ["c_attn"], rank=2, fan_in_fan_out=True)
    _edit_config(tmp_path / "g", base_model_name_or_path=None)
    with pytest.raises(ValueError, match="targets module 'transformer.h.0.attn.c_attn', which 'tiny-llama' lacks"):
        with apply_edit(nn_llama, load_edit(tmp_path / "g")):
            pass


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    torch.save({"x": torch.zeros(1)}, tmp_path / "adapter_model.bin")
    with pytest.raises((ValueError, FileNotFoundError), match="adapter_model.safetensors"):
        load_edit(tmp_path)


def test_shipped_zoo_lora_equals_peft_token_for_token(zoo_llama):
    """The zoo's refusal LoRA (float16 tensors, trained with peft) under our hooks and under peft itself."""
    from commandv_interp import zoo
    from commandv_interp.zoo.donor_edits import edit_path, load_zoo_edit

    folder = edit_path("llama-6x128", "refusal", "lora")
    hf = copy.deepcopy(hf_model_of(zoo_llama))
    peft_model = peft.PeftModel.from_pretrained(hf, folder).eval()
    batch = zoo_llama.encode(zoo.prompts("refusal", "test")[:8])
    with apply_edit(zoo_llama, load_zoo_edit("llama-6x128", "refusal", "lora")):
        ours = zoo_llama.generate_ids(batch, 16)
    with torch.no_grad():
        ref = peft_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=16,
                                  do_sample=False)[:, batch.input_ids.shape[1]:]
    assert torch.equal(ours, ref)


def test_lora_through_transformer_lens_equals_nnsight(hf_llama, nn_llama, tl_llama, tmp_path):
    """The hooks sit on the Hugging Face projections the TransformerLens bridge runs too."""
    _peft_folder(hf_llama[0], tmp_path / "l", ["q_proj", "up_proj"], rank=4)
    lora = load_edit(tmp_path / "l")
    batch = nn_llama.encode(random_prompts(3, seed=1))
    with apply_edit(nn_llama, lora):
        want = nn_llama.generate_ids(batch, 8)
    with apply_edit(tl_llama, lora):
        got = tl_llama.generate_ids(batch, 8)
    assert torch.equal(got, want) and not torch.equal(want, nn_llama.generate_ids(batch, 8))
