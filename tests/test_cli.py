"""The `commandv` CLI: each subcommand writes what the Python API computes on the same inputs; user errors exit 2
with one line on stderr."""

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch
from typer.testing import CliRunner

from conftest import random_prompts

import commandv_interp as cv
from commandv_interp.converters.interface import fit_interface_converters
from commandv_interp.app import cli

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def user_error(*args: str) -> str:
    """Run a command that must fail as a user error; return its one stderr line."""
    result = invoke(*args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def pipeline(tiny_dir, tmp_path_factory):
    """profile → match → derive by the CLI on the tiny donor (Llama) and recipient (GPT-2); a donor adapter."""
    tmp = tmp_path_factory.mktemp("cli")
    prompts = random_prompts(32, seed=7)
    (tmp / "prompts.txt").write_text("\n".join(prompts))
    (tmp / "other.txt").write_text("\n".join(random_prompts(32, seed=8)))
    donor, recipient = tiny_dir / "llama", tiny_dir / "gpt2"
    ok("profile", donor, tmp / "prompts.txt", "--out", tmp / "donor.safetensors", "--layers", "0,1,2,3")
    ok("profile", recipient, tmp / "prompts.txt", "--out", tmp / "recipient.safetensors", "--batch-size", "16")
    ok("match", tmp / "donor.safetensors", tmp / "recipient.safetensors", "--out", tmp / "map.json",
       "--method", "similarity", "--metric", "cka", "--assignment", "monotone")
    derived = ok("derive", tmp / "donor.safetensors", tmp / "recipient.safetensors", "--map", tmp / "map.json",
                 "--out", tmp / "converters.safetensors", "--method", "ridge")
    adapter, _ = cv.train_adapter(cv.open_model(donor), [(p, "w5 w6") for p in prompts[:8]], layers=[0, 2],
                                  rank=4, steps=2, progress=False)
    cv.save_adapter(adapter, tmp / "adapter")
    return {"tmp": tmp, "prompts": prompts, "donor": donor, "recipient": recipient, "derive_output": derived.output}


def test_profile_match_derive_equal_the_api(pipeline):
    tmp, prompts = pipeline["tmp"], pipeline["prompts"]
    p_donor = cv.ActivationProfile.load(tmp / "donor.safetensors")
    p_recipient = cv.ActivationProfile.load(tmp / "recipient.safetensors")
    expected = cv.profile(cv.open_model(pipeline["donor"]), prompts, progress=False)
    assert p_donor.layers == [0, 1, 2, 3] and p_recipient.layers == [0, 1, 2]
    for layer in expected.layers:
        assert torch.equal(p_donor[layer], expected[layer])
    layer_map = cv.LayerMap.load(tmp / "map.json")
    expected_map = cv.match_layers(p_donor, p_recipient, method="similarity", metric="cka", assignment="monotone")
    assert layer_map.pairs == expected_map.pairs and layer_map.assignment == "monotone"
    converters = cv.Converters.load(tmp / "converters.safetensors")
    expected_conv = cv.fit_converters(p_donor, p_recipient, expected_map, method="ridge")
    assert converters.method == "ridge" and converters.layer_map() == expected_conv.layer_map()
    for got, want in zip(converters, expected_conv):  # the file holds the same fit in float32
        assert _same_parts(got.to_donor, want.to_donor) and _same_parts(got.to_recipient, want.to_recipient)
    table = pipeline["derive_output"]  # the per-pair held-out fit scores table
    assert "r2" in table and "rel_mse" in table and table.count("to_recipient") == len(converters)


def test_paste_writes_what_paste_generates(pipeline):
    tmp, prompts = pipeline["tmp"], pipeline["prompts"]
    out = tmp / "generations.jsonl"
    ok("paste", pipeline["recipient"], tmp / "adapter", tmp / "converters.safetensors", tmp / "prompts.txt",
       "--out", out, "--positions", "all+decode", "--alpha", "30", "--max-new-tokens", "4", "--batch-size", "64")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    recipient = cv.open_model(pipeline["recipient"])
    batch = recipient.encode(prompts)
    with cv.paste(recipient, cv.load_adapter(tmp / "adapter"), cv.Converters.load(tmp / "converters.safetensors"),
                  positions="all+decode", alpha=30.0):
        expected = recipient.generate(batch, max_new_tokens=4)
    assert [r["prompt"] for r in rows] == prompts
    assert [r["output"] for r in rows] == expected
    assert expected != recipient.generate(batch, max_new_tokens=4)  # the paste changes the generations


def test_compile_writes_compile_paste(pipeline):
    tmp = pipeline["tmp"]
    result = ok("compile", tmp / "adapter", tmp / "converters.safetensors", "--out", tmp / "native",
                "--positions", "last+decode", "--alpha", "0.5", "--json")
    report = json.loads(result.stdout)
    native = cv.load_adapter(tmp / "native")
    expected = cv.compile_paste(cv.load_adapter(tmp / "adapter"), cv.Converters.load(tmp / "converters.safetensors"),
                                positions="last+decode", alpha=0.5)
    assert report["layers"] == native.layers == expected.layers and native.positions == "last+decode"
    for layer in expected.layers:
        got, want = native.interventions[layer].state_dict(), expected.interventions[layer].state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_derive_interface_fits_the_given_adapter(pipeline):
    """--method interface: the file equals the API's fit for that adapter, pastes it, and needs --adapter."""
    tmp = pipeline["tmp"]
    out = tmp / "interface.safetensors"
    ok("derive", tmp / "donor.safetensors", tmp / "recipient.safetensors", "--map", tmp / "map.json", "--out", out,
       "--method", "interface", "--adapter", tmp / "adapter")
    adapter = cv.load_adapter(tmp / "adapter")
    want = fit_interface_converters(cv.ActivationProfile.load(tmp / "donor.safetensors"), cv.ActivationProfile.load(tmp / "recipient.safetensors"), cv.LayerMap.load(tmp / "map.json"), adapter)
    got = cv.Converters.load(out)
    assert got.method == "interface" and got.adapter_digest == adapter.digest()
    for g, w in zip(got, want):
        assert _same_parts(g.to_recipient, w.to_recipient)
    line = user_error("derive", tmp / "donor.safetensors", tmp / "recipient.safetensors", "--map", tmp / "map.json",
                      "--out", tmp / "x.safetensors", "--method", "interface")
    assert "--adapter" in line


def test_derive_chain_alpha_equals_the_chained_fit(pipeline):
    """--chain-alpha: the file equals fit_chained_converters on the same models, prompts and profiles,
    records its alpha, and needs both models and the prompts."""
    tmp = pipeline["tmp"]
    out = tmp / "chained.safetensors"
    common = [tmp / "donor.safetensors", tmp / "recipient.safetensors", "--map", tmp / "map.json", "--method",
              "interface", "--adapter", tmp / "adapter", "--chain-alpha", "0.5"]
    ok("derive", *common, "--out", out, "--donor-model", pipeline["donor"], "--recipient-model",
       pipeline["recipient"], "--prompts", tmp / "prompts.txt")
    adapter = cv.load_adapter(tmp / "adapter")
    want = cv.fit_chained_converters(
        cv.open_model(pipeline["donor"]), cv.open_model(pipeline["recipient"]), adapter, pipeline["prompts"],
        cv.LayerMap.load(tmp / "map.json"), alpha=0.5,
        donor_profile=cv.ActivationProfile.load(tmp / "donor.safetensors"),
        recipient_profile=cv.ActivationProfile.load(tmp / "recipient.safetensors"))
    got = cv.Converters.load(out)
    assert got.extra["chained"] and got.chain_alpha == 0.5
    for g, w in zip(got, want):
        torch.testing.assert_close(g.to_donor.weight, w.to_donor.weight.float())
        torch.testing.assert_close(g.to_recipient.weight, w.to_recipient.weight.float())
    line = user_error("derive", *common, "--out", tmp / "x.safetensors", "--donor-model", pipeline["donor"])
    assert "--recipient-model" in line and "--prompts" in line
    line = user_error("derive", *common, "--out", tmp / "x.safetensors", "--donor-model", pipeline["donor"],
                      "--recipient-model", pipeline["recipient"], "--prompts", tmp / "other.txt")
    assert "taken on other prompts" in line


def test_json_output_is_one_object(pipeline):
    tmp = pipeline["tmp"]
    match = json.loads(ok("match", tmp / "donor.safetensors", tmp / "recipient.safetensors",
                          "--out", tmp / "depth.json", "--json").stdout)
    pairs = tuple(tuple(p) for p in match["pairs"])
    assert match["method"] == "depth" and pairs == cv.LayerMap.load(tmp / "depth.json").pairs
    derive = json.loads(ok("derive", tmp / "donor.safetensors", tmp / "recipient.safetensors",
                           "--map", tmp / "depth.json", "--out", tmp / "pinv.safetensors", "--json").stdout)
    assert {r["direction"] for r in derive["fit_scores"]} == {"to_donor", "to_recipient"}
    prof = json.loads(ok("profile", pipeline["recipient"], tmp / "prompts.txt", "--out",
                         tmp / "r0.safetensors", "--layers", "0", "--json").stdout)
    assert prof["layers"] == [0] and prof["n_prompts"] == len(pipeline["prompts"])


def test_user_errors_exit_2_with_one_line(pipeline, tmp_path):
    tmp = pipeline["tmp"]
    ok("profile", pipeline["recipient"], tmp / "other.txt", "--out", tmp / "other.safetensors")
    line = user_error("match", tmp / "donor.safetensors", tmp / "other.safetensors", "--out", tmp_path / "m.json")
    assert "different prompts" in line
    line = user_error("paste", pipeline["recipient"], tmp_path / "no_adapter", tmp / "converters.safetensors",
                      tmp / "prompts.txt", "--out", tmp_path / "g.jsonl")
    assert "adapter folder" in line and "does not exist" in line
    (tmp_path / "zoo").mkdir()
    zoo_root = _fake_zoo(tmp_path / "zoo")  # apart from --out: an --out inside the zoo root is refused first
    line = user_error("profile", "no-such-model", tmp / "prompts.txt", "--out", tmp_path / "p.safetensors",
                      "--zoo-root", zoo_root)
    assert "unknown zoo model 'no-such-model'" in line and "gpt2-4x96" in line
    assert "does not exist" in user_error("profile", pipeline["recipient"], tmp_path / "missing.txt",
                                          "--out", tmp_path / "p.safetensors")
    assert "--layers" in user_error("profile", pipeline["recipient"], tmp / "prompts.txt", "--out",
                                    tmp_path / "p.safetensors", "--layers", "0,x")
    with pytest.raises(ValueError, match="different prompts"):  # --debug re-raises instead
        runner.invoke(cli.app, ["match", str(tmp / "donor.safetensors"), str(tmp / "other.safetensors"),
                                "--out", str(tmp_path / "m.json"), "--debug"], catch_exceptions=False)


def _fake_zoo(root: Path) -> Path:
    """A manifest listing the zoo's specs (no checkpoints): enough for `zoo list` and name resolution."""
    from commandv_interp.zoo.architectures import ZOO

    models = {name: {"spec": s.to_dict(), "n_params": 1000 + i, "adapters": {"refusal": {}, "cot": {}}}
              for i, (name, s) in enumerate(sorted(ZOO.items()))}
    (root / "manifest.json").write_text(json.dumps({"models": models}))
    return root


def test_choices_mirror_the_library():
    from commandv_interp import converters, correspondence, types, zoo
    from commandv_interp.correspondence.layer_map import Assignment
    from commandv_interp.zoo.prompt_sets import PROFILE_SETS

    assert get_args(cli.MatchMethod) == get_args(correspondence.MatchMethod)
    assert get_args(cli.Assignment) == get_args(Assignment)
    assert get_args(cli.Metric) == get_args(correspondence.Metric)
    assert get_args(cli.DeriveMethod) == converters.CONVERTER_METHODS
    assert set(get_args(cli.PastePositions)) <= set(types.POSITION_RULES)
    assert get_args(cli.Backend) == get_args(zoo.catalog.Backend)
    assert get_args(cli.ProfileSet) == PROFILE_SETS
    assert get_args(cli.Behavior) == zoo.BEHAVIORS and get_args(cli.Split) == get_args(zoo.world.Split)
    assert get_args(cli.WorldName) == tuple(zoo.WORLDS)


def test_console_script_help():
    script = Path(sys.executable).with_name("commandv")
    if not script.exists():
        pytest.skip("console script not installed (pip install -e . --no-deps)")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "profile" in out.stdout and "zoo" in out.stdout
    for command in ("profile", "match", "derive", "paste", "compile"):
        assert "Example: commandv " + command in invoke(command, "--help").stdout


def test_remote_local_profile_and_paste_equal_local(pipeline, server_like):
    """``--remote local``: the same files as a local run, through nnsight's server simulation."""
    tmp = pipeline["tmp"]
    ok("profile", pipeline["recipient"], tmp / "prompts.txt", "--out", tmp / "remote.safetensors", "--batch-size", "16",
       "--remote", "local")
    local, remote = (cv.ActivationProfile.load(tmp / f) for f in ("recipient.safetensors", "remote.safetensors"))
    assert all(torch.equal(remote[layer], local[layer]) for layer in local.layers)
    args = ["--positions", "last+decode", "--alpha", "30", "--max-new-tokens", "4"]
    for name, extra in (("local.jsonl", []), ("remote.jsonl", ["--remote", "local"])):
        ok("paste", pipeline["recipient"], tmp / "adapter", tmp / "converters.safetensors", tmp / "prompts.txt",
           "--out", tmp / name, *args, *extra)
    assert (tmp / "remote.jsonl").read_text() == (tmp / "local.jsonl").read_text()
    assert server_like.requests >= 2 and server_like.refused == []


def test_profile_reaches_the_heldout_world(tmp_path):
    """``--world heldout``: the zoo name and the zoo:<behavior>:<split> prompts both resolve in the held-out world."""
    from commandv_interp import zoo

    report = json.loads(ok("profile", "neox-4x80", "zoo:refusal:profile", "--world", "heldout", "--out",
                           tmp_path / "p.safetensors", "--layers", "0", "--json").stdout)
    got = cv.ActivationProfile.load(tmp_path / "p.safetensors")
    prompts = zoo.prompts("refusal", "profile", world="heldout")
    expected = cv.profile(zoo.load_model("neox-4x80", world="heldout"), prompts, layers=[0], progress=False)
    assert report["layers"] == [0] and report["n_prompts"] == len(prompts) and got.model_name == "neox-4x80"
    assert got.prompts_fingerprint == expected.prompts_fingerprint and torch.equal(got[0], expected[0])
    assert prompts != zoo.prompts("refusal", "profile")  # not the main world's prompts


def test_paste_scores_in_the_world_of_its_prompts(tmp_path):
    """``paste --world heldout``: model, zoo:<model>:<behavior> adapter and prompts of the held-out world; ``--score``
    scores with its refusal and comply words."""
    from commandv_interp import zoo

    donor, recipient = (zoo.load_model(m, world="heldout") for m in ("neox-4x80", "qwen3-4x112"))
    prompts = zoo.prompts("refusal", "profile", world="heldout")[:64]  # any converters do: the test is the world
    p_donor, p_recipient = cv.profile(donor, prompts, progress=False), cv.profile(recipient, prompts, progress=False)
    cv.fit_converters(p_donor, p_recipient, cv.match_layers(p_donor, p_recipient), method="pinv").save(
        tmp_path / "converters.safetensors")
    report = json.loads(ok("paste", "qwen3-4x112", "zoo:neox-4x80:refusal", tmp_path / "converters.safetensors",
                           "zoo:refusal:test", "--world", "heldout", "--out", tmp_path / "g.jsonl", "--score",
                           "refusal", "--max-new-tokens", "4", "--batch-size", "64", "--json").stdout)
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == zoo.prompts("refusal", "test", world="heldout")
    expected = zoo.score("refusal", [r["prompt"] for r in rows], [r["output"] for r in rows], world="heldout")
    assert report["rates"] == expected and expected["n_harmful"] > 0 and expected["n_benign"] > 0


def test_sweep_names_models_of_its_world(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text('pairs = [["llama-6x128", "neox-4x80"]]\nbehaviors = ["refusal"]\n')
    line = user_error("sweep", study, "--out", tmp_path / "s", "--world", "heldout")
    assert "['llama-6x128']" in line and "'heldout' world" in line and "qwen3-4x112" in line


def _same_parts(stored, fitted) -> bool:
    """A converter read from a file equals the fitted one, part by part, rounded to the storage dtype."""
    return all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b.to(a.dtype)))
               for a, b in ((stored.left, fitted.left), (stored.right, fitted.right), (stored.bias, fitted.bias)))
