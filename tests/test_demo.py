"""The offline demo on the shipped zoo (a small limit keeps it fast): four rows per behavior, compute ratio,
report and figures written; the analyses scripts regenerate their figures."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from commandv_interp.app.demo import format_transfer_tables, run_demo
from commandv_interp.app.transfer_table import CONDITIONS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # demo runs on zoo models, minutes in all


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    table = run_demo(behaviors=("refusal", "cot"), method="interface", profile_set="task", limit=16, out=out,
                     progress=False)
    return out, table


def test_demo_table_has_four_rows_per_behavior_and_costs(demo):
    out, table = demo
    for behavior in ("refusal", "cot"):
        sub = table[table.behavior == behavior]
        assert set(sub.condition) == set(CONDITIONS)
        cost = sub[sub.metric == "flops"].set_index("condition")["value"]
        assert 0 < cost["command_v"] < cost["recipient_finetune"]
    saved = pd.read_csv(out / "transfer.csv")
    assert len(saved) == len(table)
    text = format_transfer_tables(table)
    assert "recipient + Command-V" in text and "recipient + direct ReFT finetune" in text and "ratio" in text


def test_demo_writes_report_and_figures(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    assert "# Command-V demo: llama-6x128 → gpt2-4x96" in report
    for name in ("similarity.png", "fidelity_refusal.png", "fidelity_cot.png", "faithfulness.csv"):
        assert (out / name).stat().st_size > 1000, name
        if name.endswith(".png"):
            assert f"]({name})" in report


def test_demo_with_interface_converters_fits_one_per_behavior(tmp_path):
    """--method interface --profile-set task: each behavior gets converters fitted to its own adapter on its own
    small prompt set, so each has its own Command-V cost."""
    table = run_demo(behaviors=("jailbreak", "cot"), method="interface", profile_set="task", limit=8, out=tmp_path,
                     progress=False)
    cost = table[(table.condition == "command_v") & (table.metric == "flops")].set_index("behavior")["value"]
    assert cost["jailbreak"] != cost["cot"] and (cost > 0).all()
    assert "`interface`" in (tmp_path / "report.md").read_text()


def test_demo_refuses_a_pair_of_one_model(tmp_path):
    with pytest.raises(ValueError, match="different"):
        run_demo("gpt2-4x96", "gpt2-4x96", out=tmp_path)
    with pytest.raises(ValueError, match="chain=True chains interface converters"):
        run_demo("qwen2-5x160", "gpt2-4x96", method="ridge", chain=True, out=tmp_path)


def test_cli_demo_chained_refusal_from_qwen2(tmp_path):
    """`--chain --alpha 0.25` (the CLI end to end): qwen2 → gpt2 refusal, which plain interface converters do not
    transfer at α = 1 (0.00 on these prompts), pasted with chained converters at α = 0.25."""
    import json

    from typer.testing import CliRunner

    from commandv_interp.app.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--donor", "qwen2-5x160", "--behavior", "refusal", "--method", "interface",
                                      "--chain",
                                      "--alpha", "0.25", "--limit", "32", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = pd.DataFrame(json.loads(result.stdout)["rows"])
    rate = rows.set_index(["condition", "metric"])["value"]
    assert rate[("command_v", "refusal")] >= 0.9 and rate[("command_v", "false_refusal")] <= 0.05
    assert rate[("recipient_base", "refusal")] <= 0.1
    assert "`interface` (chained); α = 0.25" in (out / "report.md").read_text()


TINY_STUDY = """pairs = [["llama-6x128", "gpt2-4x96"]]
behaviors = ["refusal"]
alphas = [0.5, 1.0]
limit = 8
n_boot = 20
"""


@pytest.mark.parametrize("script", ["fig_similarity.py", "fig_alpha.py", "fig_scale.py"])
def test_analysis_script_regenerates_its_figure(script, tmp_path):
    """One command writes PNG + PDF + CSV and prints its caption; a study script runs a (tiny) study file."""
    args = ["--out", str(tmp_path / "figures")]
    if script == "fig_scale.py":  # one transfer and its scored scales
        args += ["--runs", "llama-6x128:gpt2-4x96:0"]
    elif script != "fig_similarity.py":
        (tmp_path / "tiny.toml").write_text(TINY_STUDY)
        args += ["--study", str(tmp_path / "tiny.toml"), "--cache", str(tmp_path / "cache")]
    run = subprocess.run([sys.executable, str(ROOT / "analyses" / script), *args], check=True, capture_output=True,
                         text=True, timeout=600)
    written = {p.suffix for p in (tmp_path / "figures").iterdir()}
    assert {".png", ".pdf", ".csv"} <= written
    assert "caption: " in run.stdout


def test_cli_demo_prints_the_four_rows(tmp_path):
    from typer.testing import CliRunner

    from commandv_interp.app.cli import app

    result = CliRunner().invoke(app, ["demo", "--behavior", "jailbreak", "--limit", "32", "--out", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = pd.DataFrame(json.loads(result.stdout)["rows"]).set_index(["condition", "metric"])["value"]
    assert set(CONDITIONS) <= {c for c, _ in rows.index}
    # the default demo is the label-free transfer: on this pair it carries jailbreak (1.00 in the benchmark)
    assert rows[("command_v", "compliance")] >= 0.9 and rows[("command_v", "false_refusal")] <= 0.05
    report = (tmp_path / "report.md").read_text()
    assert "Label-free `cv.transfer`" in report
    label = next(r["label"] for r in json.loads(result.stdout)["rows"] if r["condition"] == "command_v")
    assert label.startswith("recipient + Command-V paste") and f"compute: {label.removeprefix('recipient + ')} " in (
        format_transfer_tables(pd.DataFrame(json.loads(result.stdout)["rows"])))
    assert "## The final edit, layer by layer" in report
    assert "![final edit, jailbreak](final_edit_jailbreak.png)" in report


def test_demo_labels_and_analyzes_the_final_edit_of_cot(tmp_path):
    """The CoT row says what the transfer applied: "distillation only (no paste)" when it chose the distillation from
    scratch (as on this pair), and the report analyzes that adapter layer by layer."""
    import re

    from commandv_interp.pipeline.labels import DISTILLATION_ONLY

    table = run_demo(behaviors=("cot",), limit=16, out=tmp_path, progress=False)
    report = (tmp_path / "report.md").read_text()
    choice = re.search(r"cot: \*\*(.+?)\*\* \(`([^`]+)`", report)
    assert choice, report[:600]
    label, name = choice.groups()
    row = table[(table.condition == "command_v") & (table.metric == "cot_format")].label.iloc[0]
    assert row == f"recipient + {label}"
    assert (label == DISTILLATION_ONLY) == name.startswith("scratch+"), (label, name)
    assert f"compute: {label} " in report and "compute: Command-V " not in report.replace("Command-V paste", "")
    assert f"### cot: {label} (`{name}`)" in report
    final = pd.read_csv(tmp_path / "final_edit.csv")
    assert set(final.analysis) >= {"attribution", "change"} and set(final.label) == {label}
    assert (tmp_path / "final_edit_cot.png").stat().st_size > 1000
