"""zoo/generated/edits.py: a generated world's LoRA and steering donors, built once into the world folder, then
loaded; refused for another world; the LoRA a PEFT folder; the vector's scale picked on train prompts by the rule."""

import copy
import json
import shutil

import pytest
import torch
from conftest import assert_close

import commandv_interp as cv
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.lora import hf_model_of
from commandv_interp.io import dir_mode
from commandv_interp.zoo.generated import TINY, build_world
from commandv_interp.zoo.generated import edits as gen_edits
from commandv_interp.zoo.generated.corpus import items
from commandv_interp.zoo.generated.edits import TINY_RECIPE, edit_folder, edit_record, world_edit
from commandv_interp.zoo.train_edits import SCALES, SIDE_SLACK

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # each test builds a tiny world and trains its donor edits (a few steps)


@pytest.fixture(scope="module")
def refusal_world(tmp_path_factory):
    return build_world(3, config=TINY, cache_dir=tmp_path_factory.mktemp("worlds"))  # a refusal world


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_edits_are_built_once_then_loaded_from_the_world_folder(refusal_world, monkeypatch):
    w = refusal_world
    lora, steering = world_edit(w, "lora", TINY_RECIPE), world_edit(w, "steering", TINY_RECIPE)
    assert (lora.kind, steering.kind) == ("lora", "steering")
    assert world_edit(w, "reft", TINY_RECIPE) is w.adapter
    edits = w.folder / "edits"
    assert sorted(p.name for p in edits.iterdir()) == ["lora", "steering"]  # no temporary folder left
    assert (edits / "lora").stat().st_mode & 0o777 == dir_mode()  # the umask's, not mkdtemp's 0o700
    before = _files(edits)
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors", "lora/record.json",
            "steering/steering.safetensors", "steering/record.json"} == set(before)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached edit was retrained")

    monkeypatch.setattr(gen_edits, "train_lora", no_training)
    monkeypatch.setattr(gen_edits, "train_steering", no_training)
    again = world_edit(w, "lora", TINY_RECIPE)
    assert all(torch.equal(again.modules[n][1], lora.modules[n][1]) for n in lora.modules)
    assert world_edit(w, "steering", TINY_RECIPE).scale == steering.scale
    assert _files(edits) == before  # same bytes
    record = edit_record(w, "lora", TINY_RECIPE)
    assert (record["world_seed"], record["donor"], record["kind"]) == (3, w.plans[0].name, "lora")
    assert record["training"]["steps"] == TINY_RECIPE.lora_steps
    assert set(record["test_rates"]) == {"base", "reft", "lora"}
    assert set(record["test_rates"]["lora"]) == set(w.rates)


def test_an_edit_of_another_world_or_recipe_is_refused(refusal_world, tmp_path):
    world_edit(refusal_world, "lora", TINY_RECIPE)
    other = build_world(1, config=TINY, cache_dir=tmp_path)
    shutil.copytree(edit_folder(refusal_world, "lora"), edit_folder(other, "lora"))
    with pytest.raises(ValueError, match=r"world_seed=3.*seed 1.*delete .*world_edit\(world, 'lora'\)"):
        world_edit(other, "lora", TINY_RECIPE)
    with pytest.raises(ValueError, match=r"recipe=.*delete"):
        world_edit(refusal_world, "lora", gen_edits.RECIPE)
    with pytest.raises(ValueError, match="kind='dora'"):
        world_edit(refusal_world, "dora")


def test_the_lora_folder_is_peft_s_and_peft_applies_it_as_we_do(refusal_world):
    peft = pytest.importorskip("peft")
    w, folder = refusal_world, edit_folder(refusal_world, "lora")
    world_edit(w, "lora", TINY_RECIPE)
    lora = cv.load_edit(folder)
    assert lora.kind == "lora" and lora.rank == 8 and lora.layers == list(range(w.donor_model.n_layers))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "donor"
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf_model_of(w.donor_model)), folder).eval()
    batch = w.donor_model.encode(w.prompts("test")[:3])
    with apply_edit(w.donor_model, lora):
        ours = w.donor_model.forward(batch)
    with torch.no_grad():
        theirs = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = hf_model_of(w.donor_model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.attention_mask.bool()
    assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[mask], base[mask], atol=1e-6)  # the LoRA changes the logits


def test_the_steering_scale_is_picked_on_train_prompts_by_the_rule(tmp_path, monkeypatch):
    w = build_world(3, config=TINY, cache_dir=tmp_path)
    # planted rates per call: the unedited donor, then each of SCALES in order. 1.5 has the highest refusal but
    # false refusal 0.05 + 0.03 (over the +0.02 slack); 0.75 and 2.0 tie at 0.9 within the slack: the smaller wins
    planted = [(0.1, 0.05), (0.2, 0.05), (0.5, 0.06), (0.9, 0.065), (0.85, 0.05), (1.0, 0.08), (0.9, 0.05),
               (0.95, 0.2)]
    assert len(planted) == len(SCALES) + 1 and 0.05 + SIDE_SLACK < 0.08
    train_prompts = {i.prompt for i in items(w.grammar, "train")}
    seen = []

    def planted_rates(g, model, its, cue=False):
        assert not cue and len(its) == TINY_RECIPE.steer_prompts and {i.prompt for i in its} <= train_prompts
        seen.append(len(seen))
        target, side = planted[len(seen) - 1]
        return {"refusal": target, "false_refusal": side}

    monkeypatch.setattr(gen_edits, "item_rates", planted_rates)
    record = edit_record(w, "steering", TINY_RECIPE)
    assert len(seen) == len(planted)  # scored on train prompts only (the test rates use world.evaluate)
    assert record["training"]["scale"] == 0.75
    assert [r["scale"] for r in record["training"]["train_rates"]] == list(SCALES)
    assert world_edit(w, "steering", TINY_RECIPE).scale == 0.75
    assert record["training"]["layer"] == w.donor_model.n_layers // 2


def test_the_label_free_benchmark_pastes_the_world_edit_s_surrogate_with_the_edit_as_teacher(refusal_world,
                                                                                           monkeypatch):
    import functools
    import importlib.util
    import sys
    from pathlib import Path

    from commandv_interp.adapters.surrogate import teacher_of

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "label_free.py"
    spec = importlib.util.spec_from_file_location("label_free_benchmark_edits", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "world_edit", functools.partial(world_edit, recipe=TINY_RECIPE))
    w = refusal_world
    cell = bench.Cell("d", "r", w.behavior, w.donor_model, w.recipient_model, w.adapter, w.prompts("train")[:8],
                      lambda m, n: {}, *w.rates, {"rates": {}, "flops": 1.0, "wall_s": 1.0}, None)
    assert bench.with_generated_edit(cell, w, "reft").adapter is w.adapter
    lora = bench.with_generated_edit(cell, w, "lora").adapter
    assert teacher_of(lora).kind == "lora" and lora.positions == "last"
    assert teacher_of(lora).modules.keys() == world_edit(w, "lora", TINY_RECIPE).modules.keys()
    assert "surrogate_agreement" in lora.metadata
