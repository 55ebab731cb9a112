"""The shipped zoo: checkpoints load offline through transformers and both backends, the manifest's behavior table
meets the acceptance criteria, re-scoring reproduces it, and ``zoo.train --quick`` regenerates a loadable zoo."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from commandv_interp import apply_adapter, open_model, zoo
from commandv_interp.zoo.catalog import DATA
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

MODELS = zoo.list_models()


def _rate(model: str, behavior: str, condition: str, metric: str) -> float:
    rows = [r for r in zoo.manifest()["behavior_table"]
            if (r["model"], r["behavior"], r["condition"], r["metric"]) == (model, behavior, condition, metric)]
    assert len(rows) == 1, (model, behavior, condition, metric)
    return rows[0]["value"]


def test_zoo_has_three_architectures_two_tokenizers_and_fits_in_30_mb():
    specs = [zoo.manifest()["models"][m]["spec"] for m in MODELS]
    assert len(MODELS) >= 3
    assert len({s["family"] for s in specs}) >= 3 and len({s["tokenizer"] for s in specs}) >= 2
    assert len({(s["n_layers"], s["d_model"]) for s in specs}) == len(specs)  # different depth and width
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"zoo is {size / 2**20:.1f} MB"


def test_manifest_file_digests_match_the_shipped_files():
    from commandv_interp.zoo.catalog import file_digest

    for name in MODELS:
        files = zoo.manifest()["models"][name]["files"]
        assert "model.safetensors" in files and "adapters/refusal/config.json" in files
        for rel, digest in files.items():
            assert file_digest(DATA / name / rel) == digest, (name, rel)


@pytest.mark.parametrize("name", MODELS)
def test_each_model_loads_offline_through_transformers_and_open_model(name):
    path = zoo.model_dir(name)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    prompts = zoo.prompts("refusal", "test")[:4]
    access = zoo.load_model(name)
    assert (access.n_layers, access.d_model) == (hf.config.num_hidden_layers, hf.config.hidden_size)
    batch = access.encode(prompts)
    with torch.no_grad():
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: learned positions need this
        hidden = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                    output_hidden_states=True)
    got = access.read(batch, [0], positions="last")[0]
    torch.testing.assert_close(got, hidden.hidden_states[1][:, -1], atol=1e-5, rtol=1e-5)
    assert tok("user : hi")["input_ids"] == access.tokenizer("user : hi")["input_ids"]


@pytest.mark.parametrize("name", MODELS)
def test_each_checkpoint_tokenizes_as_its_model_was_trained(name):
    """``AutoTokenizer`` on the checkpoint gives the ids pretraining used (transformers 5 swaps the tokenizer class
    of some model types, e.g. Qwen2's digit splitting: a zoo model trained on other ids would be silently broken)."""
    from commandv_interp.zoo.pretrain import tokenization_digest

    tok = AutoTokenizer.from_pretrained(zoo.model_dir(name), local_files_only=True)
    assert tokenization_digest(tok) == zoo.manifest()["models"][name]["pretrain"]["tokenization_digest"]


def test_transformer_lens_backend_matches_nnsight_on_a_zoo_model():
    nn, tl = zoo.load_model("llama-6x128"), zoo.load_model("llama-6x128", backend="transformer_lens")
    batch = nn.encode(zoo.prompts("cot", "test")[:5], padding_side="right")
    a, b = nn.read(batch, range(nn.n_layers - 1)), tl.read(batch, range(tl.n_layers - 1))
    for layer in a:
        torch.testing.assert_close(a[layer], b[layer], atol=1e-4, rtol=1e-4)


def _criteria(name: str, behavior: str) -> None:
    target, side = BEHAVIOR_RATES[behavior]
    assert _rate(name, behavior, "base", target) <= 0.2, "the behavior must be off without the cue"
    assert _rate(name, behavior, "cue", target) >= 0.6, "the behavior must be latent under the cue"
    assert _rate(name, behavior, "adapter", target) >= 0.9
    if behavior == "cot":
        assert _rate(name, behavior, "adapter", "accuracy") >= 2 * _rate(name, behavior, "base", "accuracy")
    else:
        assert _rate(name, behavior, "adapter", side) <= 0.1


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("behavior", zoo.BEHAVIORS)
def test_manifest_table_meets_the_zoo_criteria(name, behavior):
    _criteria(name, behavior)


@pytest.mark.slow
def test_rescoring_reproduces_the_manifest_exactly():
    """Greedy decoding is deterministic: re-scoring one model × behavior gives the manifest's numbers."""
    access = zoo.load_model("gpt2-4x96")
    with apply_adapter(access, zoo.load_adapter("gpt2-4x96", "refusal")):
        rates = zoo.evaluate(access, "refusal")
    for metric in ("refusal", "false_refusal", "compliance"):
        assert rates[metric] == _rate("gpt2-4x96", "refusal", "adapter", metric)
    assert zoo.evaluate(access, "refusal")["refusal"] == _rate("gpt2-4x96", "refusal", "base", "refusal")
    from commandv_interp.zoo.evaluate import evaluate_outcomes

    window = evaluate_outcomes(access, "refusal", "train", limit=4, start=3)  # items 3..6, as in a longer run
    assert window == evaluate_outcomes(access, "refusal", "train", limit=7)[3:] and len(window) == 4


def test_adapters_are_the_papers_setup():
    for name in MODELS:
        n_layers = zoo.manifest()["models"][name]["spec"]["n_layers"]
        for behavior in zoo.BEHAVIORS:
            adapter = zoo.load_adapter(name, behavior)
            assert (adapter.kind, adapter.rank, adapter.positions) == ("nodireft", 8, "last")
            assert adapter.layers == list(range(0, n_layers, 2))
            cost = zoo.manifest()["models"][name]["adapters"][behavior]["training"]
            assert cost["steps"] > 0 and cost["wall_time_s"] > 0 and cost["flops"] > 0


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="known"):
        zoo.load_model("gpt5")
    # Literal-typed arguments: the runtime type checker of the test run (a TypeError) or our ValueError
    with pytest.raises((ValueError, TypeError), match="behavior"):
        zoo.load_adapter(MODELS[0], "flattery")
    with pytest.raises((ValueError, TypeError), match="backend"):
        zoo.load_model(MODELS[0], backend="jax")


@pytest.mark.slow
def test_train_quick_regenerates_a_loadable_zoo(tmp_path):
    from commandv_interp.zoo.train import main

    main(["--quick", "--model", "gpt2-4x96", "--out", str(tmp_path), "--no-progress"])
    assert zoo.list_models(tmp_path) == ["gpt2-4x96"]
    manifest = zoo.manifest(tmp_path)
    assert manifest["quick"] and manifest["world_fingerprint"] == zoo.manifest()["world_fingerprint"]
    assert {r["condition"] for r in manifest["behavior_table"]} == {"base", "cue", "adapter"}
    adapter = zoo.load_adapter("gpt2-4x96", "cot", root=tmp_path)
    access = zoo.load_model("gpt2-4x96", root=tmp_path)
    assert adapter.d_model == access.d_model and adapter.metadata["behavior"] == "cot"
    assert open_model(zoo.model_dir("gpt2-4x96", tmp_path)).n_layers == 4
