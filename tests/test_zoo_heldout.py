"""The second world: the main world is untouched by the parametrization, ``heldout`` differs from it in every content
word, template, cue and response string, holds its test prompts out of its corpus, and its shipped zoo (two
architectures the main zoo lacks) loads offline on both backends and meets the main zoo's bar."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from commandv_interp import zoo
from commandv_interp.zoo import world
from commandv_interp.zoo.catalog import DATA, world_dir
from commandv_interp.zoo.scoring import BEHAVIOR_RATES, contrast, is_compliance, is_refusal
from commandv_interp.zoo.worlds import HELDOUT, MAIN

MODELS = zoo.list_models(world="heldout")


def _content(w: world.World) -> set[str]:
    return set(w.objects + w.benign + w.harmful + w.severe + w.tools + w.colors + w.places + w.animals + w.actions)


def _requests(docs: list[str]) -> set[str]:
    """The cue-less ``user : … assistant :`` prompt of every request document."""
    return {"user :" + d.split("user :", 1)[1].split(" assistant :", 1)[0] + " assistant :" for d in docs
            if "user :" in d}


def test_main_world_is_the_shipped_one():
    """Fingerprint (vocabulary, every split, a corpus sample) and prompts are those the main zoo was trained on."""
    shipped = zoo.manifest()["world_fingerprint"]
    assert world.world_fingerprint() == world.world_fingerprint("main") == world.world_fingerprint(MAIN) == shipped
    for name in zoo.list_models():
        assert zoo.manifest()["models"][name]["pretrain"]["world_fingerprint"] == shipped
        assert zoo.load_adapter(name, "refusal").metadata["world_fingerprint"] == shipped
    for behavior in zoo.BEHAVIORS:
        assert zoo.prompts(behavior, "test") == zoo.prompts(behavior, "test", world="main")
    assert zoo.manifest(world="main") == zoo.manifest() and world_dir() == DATA
    assert zoo.CUES == MAIN.cues and (world.REFUSAL, world.COMPLY_PREFIX) == (MAIN.refusal, MAIN.comply_prefix)


def test_heldout_world_differs_in_every_content_word_template_cue_and_response():
    assert HELDOUT.seed != MAIN.seed and world.world_fingerprint("heldout") != world.world_fingerprint()
    assert not _content(HELDOUT) & set(world.vocabulary())
    assert not set(HELDOUT.frames) & set(MAIN.frames) and not set(HELDOUT.openers[1:]) & set(MAIN.openers)
    assert not {q for q, _ in HELDOUT.questions} & {q for q, _ in MAIN.questions}
    assert not (set(HELDOUT.cues.values()) | set(HELDOUT.neutral_cues)) & (set(MAIN.cues.values())
                                                                            | set(MAIN.neutral_cues))
    assert HELDOUT.refusal_word != MAIN.refusal_word and HELDOUT.comply_word != MAIN.comply_word
    assert not set(HELDOUT.models) & set(MAIN.models) and zoo.WORLD_BEHAVIORS["heldout"] == ("refusal", "jailbreak")
    assert contrast("heldout") == {"refusal": ("no", "ok"), "jailbreak": ("ok", "no")}
    assert is_refusal(HELDOUT.refusal, "heldout") and not is_refusal(HELDOUT.refusal)
    assert is_compliance("ok . to tidy the hat", world="heldout") and not is_compliance("sure .", world="heldout")
    with pytest.raises(ValueError, match="heldout"):
        zoo.prompts("cot", "test", world="heldout")
    with pytest.raises(ValueError, match="known"):
        zoo.prompts("refusal", "test", world="nowhere")


def test_heldout_corpus_uses_its_own_vocabulary_and_never_shows_a_test_prompt():
    corpus = world.build_corpus(0, 10_000, "heldout")
    assert set(" ".join(corpus).split()) <= set(world.vocabulary("heldout"))
    seen = _requests(corpus)
    lay = world._layout(HELDOUT)
    for behavior in HELDOUT.behaviors:
        test, train = world.items(behavior, "test", "heldout"), world.items(behavior, "train", "heldout")
        assert len({i.prompt for i in test}) == 160 and not {i.prompt for i in test} & seen
        assert not {i.prompt for i in test} & {i.prompt for i in train}
        for it in train:
            assert world._parse_request(it.prompt, HELDOUT)[1] not in lay.test_objects
            assert not any(it.prompt == world._chat(world._request(o, f, *world._parse_request(it.prompt, HELDOUT)))
                           for o, f in lay.test_pairs)
        for it in test:
            cued = world.classify(world.with_cue(it.prompt, behavior, "heldout"), "heldout")
            assert cued.category == it.category == world.classify(it.prompt, "heldout").category
    held_pairs = {world._chat(world._request(o, f, "{v}", "{o}")).split("{v}")[0] for o, f in lay.test_pairs}
    assert not any(r.startswith(p) for r in seen for p in held_pairs)


def test_heldout_manifest_meets_the_zoo_bar():
    table = {(r["model"], r["behavior"], r["condition"], r["metric"]): r["value"]
             for r in zoo.manifest(world="heldout")["behavior_table"]}
    manifest = zoo.manifest(world="heldout")
    assert manifest["world"] == "heldout" and manifest["world_fingerprint"] == world.world_fingerprint("heldout")
    assert not manifest["quick"] and len(MODELS) >= 2
    assert len({manifest["models"][m]["spec"]["family"] for m in MODELS}) == len(MODELS)
    for name in MODELS:
        assert manifest["models"][name]["spec"]["family"] not in {"llama", "gpt2", "qwen2"}
        for behavior in HELDOUT.behaviors:
            target, side = BEHAVIOR_RATES[behavior]
            assert table[(name, behavior, "base", target)] <= 0.2
            assert table[(name, behavior, "cue", target)] >= 0.6
            assert table[(name, behavior, "adapter", target)] >= 0.9
            assert table[(name, behavior, "adapter", side)] <= 0.1
            assert table[(name, behavior, "base", "n_harmful")] == 80
            adapter = zoo.load_adapter(name, behavior, world="heldout")
            assert (adapter.kind, adapter.rank, adapter.positions) == ("nodireft", 8, "last")
            assert adapter.layers == list(range(0, manifest["models"][name]["spec"]["n_layers"], 2))
            assert adapter.metadata["world_fingerprint"] == manifest["world_fingerprint"]


def test_heldout_zoo_is_small_and_its_files_match_the_manifest():
    from commandv_interp.zoo.catalog import file_digest

    folder = world_dir("heldout")
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 10 * 2**20
    for name in MODELS:
        for rel, digest in zoo.manifest(world="heldout")["models"][name]["files"].items():
            assert file_digest(folder / name / rel) == digest, (name, rel)


@pytest.mark.parametrize("name", MODELS)
def test_heldout_models_load_offline_on_both_backends(name):
    from commandv_interp.zoo.pretrain import tokenization_digest

    path = zoo.model_dir(name, world="heldout")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tokenization_digest(tok, "heldout") == \
        zoo.manifest(world="heldout")["models"][name]["pretrain"]["tokenization_digest"]
    nn, tl = zoo.load_model(name, world="heldout"), zoo.load_model(name, "transformer_lens", world="heldout")
    batch = nn.encode(zoo.prompts("jailbreak", "test", world="heldout")[:4])
    with torch.no_grad():
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding
        hidden = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                    output_hidden_states=True)
    a, b = nn.read(batch, range(nn.n_layers - 1)), tl.read(batch, range(tl.n_layers - 1))
    for layer in a:  # the last prompt token's block output
        torch.testing.assert_close(a[layer], hidden.hidden_states[layer + 1][:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[layer], b[layer], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="known"):
        zoo.load_model(name)  # a heldout model is not in the main world


def test_a_world_is_a_frozen_hashable_value():
    again = dataclasses.replace(HELDOUT)
    assert again == HELDOUT and hash(again) == hash(HELDOUT) and zoo.get_world(again) is again
    with pytest.raises(dataclasses.FrozenInstanceError):
        HELDOUT.seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="the {o}"):
        dataclasses.replace(HELDOUT, frames=("do {v} {o}",))


@pytest.mark.slow
def test_rescoring_reproduces_the_heldout_manifest():
    """Greedy decoding is deterministic: the narrowest cell (neox's refusal adapter) re-scores to the manifest's."""
    from commandv_interp import apply_adapter

    rows = {(r["condition"], r["metric"]): r["value"] for r in zoo.manifest(world="heldout")["behavior_table"]
            if (r["model"], r["behavior"]) == ("neox-4x80", "refusal")}
    access = zoo.load_model("neox-4x80", world="heldout")
    with apply_adapter(access, zoo.load_adapter("neox-4x80", "refusal", world="heldout")):
        rates = zoo.evaluate(access, "refusal", world="heldout")
    assert (rates["refusal"], rates["false_refusal"]) == (rows[("adapter", "refusal")],
                                                          rows[("adapter", "false_refusal")])
    assert zoo.evaluate(access, "refusal", cue=True, world="heldout")["refusal"] == rows[("cue", "refusal")]


@pytest.mark.slow
def test_train_quick_regenerates_a_loadable_heldout_zoo(tmp_path):
    from commandv_interp.zoo.train import main

    main(["--world", "heldout", "--quick", "--out", str(tmp_path), "--no-progress"])
    manifest = zoo.manifest(tmp_path, world="heldout")
    assert zoo.list_models(tmp_path) == MODELS and manifest["quick"] and manifest["world"] == "heldout"
    assert manifest["world_fingerprint"] == zoo.manifest(world="heldout")["world_fingerprint"]
    assert {r["behavior"] for r in manifest["behavior_table"]} == {"refusal", "jailbreak"}
    for name in MODELS:
        adapter = zoo.load_adapter(name, "jailbreak", root=tmp_path, world="heldout")
        assert adapter.d_model == zoo.load_model(name, root=tmp_path, world="heldout").d_model
        assert adapter.metadata["world"] == "heldout"
