"""`commandv transfer`, `--replay` and `analyze` on checkpoint folders (the tiny Llama donor, the tiny GPT-2
recipient): the folder records its recipe and replays to the same choice and adapter digest; analyze reports the
edit that was applied and refuses another recipient; `--replay` on the zoo (slow)."""

import json

import pytest
from typer.testing import CliRunner

from conftest import random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.pipeline.compute import PARTS
from commandv_interp.app import cli

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def inputs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_transfer")
    cv.save_adapter(random_adapter(32, layers=(0, 2), scale=0.6, seed=3), root / "adapter")
    (root / "prompts.txt").write_text("\n".join(random_prompts(32, seed=11)) + "\n")
    (root / "other.txt").write_text("\n".join(random_prompts(32, seed=12)) + "\n")
    (root / "test.txt").write_text("\n".join(random_prompts(12, seed=5)) + "\n")
    return root


@pytest.fixture(scope="module")
def made(tiny_dir, inputs):
    out = inputs / "t1"
    result = invoke("transfer", tiny_dir / "llama", tiny_dir / "gpt2", inputs / "adapter", inputs / "prompts.txt",
                    "--out", out, "--polish-steps", "4", "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_transfer_records_its_recipe_and_replays_it(tiny_dir, inputs, made):
    out, summary = made
    meta = json.loads((out / "transfer.json").read_text())
    assert meta["config"] == summary["config"] and meta["config"]["polish_steps"] == 4
    assert meta["sources"]["donor"] == str((tiny_dir / "llama").resolve()) and meta["sources"]["limit"] == 128
    assert summary["label"] in ("Command-V paste", "distillation only (no paste)") or "distillation step" in summary[
        "label"]
    for args in ((), (tiny_dir / "llama", tiny_dir / "gpt2", inputs / "adapter", inputs / "prompts.txt")):
        result = invoke("transfer", "--replay", out, *args, "--json")
        assert result.exit_code == 0, result.output
        replay = json.loads(result.stdout)
        assert replay["reproduced"] and replay["choice"] == summary["choice"]
    result = invoke("transfer", "--replay", out, tiny_dir / "llama", tiny_dir / "gpt2", inputs / "adapter",
                    inputs / "other.txt")
    assert result.exit_code == 2 and "other prompts" in result.output
    result = invoke("transfer", "--replay", out, "--out", inputs / "x")
    assert result.exit_code == 2 and "--replay writes nothing" in result.output


def test_transfer_reports_where_its_compute_went(inputs, made):
    out, summary = made
    parts = summary["compute"]
    assert [p["part"] for p in parts] == list(PARTS)
    assert sum(p["flops"] for p in parts) == pytest.approx(summary["flops"], rel=1e-9)
    report = (out / "report.md").read_text()
    for p in parts:
        assert f"| {p['part']} | {p['flops']:.3g} | {p['share_of_call']:.1%} |" in report


def test_analyze_reports_the_applied_edit_and_refuses_another_recipient(tiny_dir, inputs, made):
    out, summary = made
    result = invoke("analyze", out, tiny_dir / "llama", tiny_dir / "gpt2", inputs / "test.txt", "--out",
                    inputs / "an")
    assert result.exit_code == 0, result.output
    report = (inputs / "an" / "report.md").read_text()
    assert report.startswith(f"# Analysis of `{summary['choice']}`: {summary['label']}")
    assert (inputs / "an" / "attribution.csv").is_file()
    result = invoke("analyze", out, tiny_dir / "llama", tiny_dir / "llama", inputs / "test.txt", "--out",
                    inputs / "an2")
    assert result.exit_code == 2 and "config hash" in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output


@pytest.mark.slow
def test_replay_reproduces_a_zoo_transfer_digest(tmp_path):
    out = tmp_path / "jb"
    made = invoke("transfer", "llama-6x128", "gpt2-4x96", "zoo:llama-6x128:jailbreak", "zoo:jailbreak:train",
                  "--limit", "64", "--out", out, "--json")
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    result = invoke("transfer", "--replay", out, "--json")
    assert result.exit_code == 0, result.output
    replay = json.loads(result.stdout)
    assert replay["reproduced"] and replay["choice"] == summary["choice"]
    assert replay["digest"] == cv.load_transfer(out).edit_digest()
