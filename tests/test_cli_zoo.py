"""`commandv zoo list|train|score`: what the zoo API returns for the same world; a zoo name or world that does not
exist exits 2 with one line on stderr."""

import json

from test_cli import _fake_zoo, invoke, ok, user_error

import commandv_interp as cv
from commandv_interp import zoo


def test_zoo_list(tmp_path):
    root = _fake_zoo(tmp_path)
    table = ok("zoo", "list", "--zoo-root", root).stdout
    assert "llama-6x128" in table and "family" in table and "tokenizer" in table
    rows = json.loads(ok("zoo", "list", "--json", "--zoo-root", root).stdout)["models"]
    assert {r["model"]: (r["family"], r["layers"], r["width"]) for r in rows}["gpt2-4x96"] == ("gpt2", 4, 96)


def test_zoo_list_heldout_world():
    table = ok("zoo", "list", "--world", "heldout").stdout
    assert "neox-4x80" in table and "qwen3-4x112" in table and "llama-6x128" not in table
    rows = json.loads(ok("zoo", "list", "--world", "heldout", "--json").stdout)["models"]
    assert [r["model"] for r in rows] == zoo.list_models(world="heldout") == ["neox-4x80", "qwen3-4x112"]
    assert [r["model"] for r in json.loads(ok("zoo", "list", "--json").stdout)["models"]] == zoo.list_models()


def test_zoo_score_heldout_world_equals_evaluate():
    report = json.loads(ok("zoo", "score", "neox-4x80", "refusal", "--world", "heldout", "--limit", "4",
                           "--json").stdout)
    expected = zoo.evaluate(zoo.load_model("neox-4x80", world="heldout"), "refusal", limit=4, world="heldout")
    assert report["model"] == "neox-4x80" and report["rates"] == expected
    assert set(expected) >= {"refusal", "compliance", "false_refusal"}


def test_zoo_score_heldout_adapter_equals_apply_adapter():
    report = json.loads(ok("zoo", "score", "qwen3-4x112", "refusal", "--world", "heldout", "--adapter",
                           "zoo:qwen3-4x112:refusal", "--limit", "4", "--json").stdout)
    model = zoo.load_model("qwen3-4x112", world="heldout")
    with cv.apply_adapter(model, zoo.load_adapter("qwen3-4x112", "refusal", world="heldout")):
        expected = zoo.evaluate(model, "refusal", limit=4, world="heldout")
    assert report["rates"] == expected


def test_world_errors_exit_2_with_one_line(tmp_path):
    line = user_error("zoo", "score", "llama-6x128", "refusal", "--world", "heldout", "--limit", "1")
    assert "unknown zoo model 'llama-6x128'" in line and "'heldout' world" in line and "neox-4x80" in line
    line = user_error("profile", "llama-6x128", "zoo:refusal:profile", "--world", "heldout", "--out",
                      tmp_path / "p.safetensors")
    assert "unknown zoo model 'llama-6x128'" in line and not (tmp_path / "p.safetensors").exists()
    assert "--world" in user_error("zoo", "list", "--world", "nowhere")
    line = user_error("zoo", "train", "--quick", "--world", "heldout", "--model", "gpt2-4x96", "--out", tmp_path / "z")
    assert "'gpt2-4x96' is not in the 'heldout' world" in line
    assert "--world" in invoke("zoo", "score", "--help").stdout
