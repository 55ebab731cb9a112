"""The one label that says what a transfer applied, on planted outcomes: a scratch choice is "distillation only (no
paste)", a polished paste names its steps, a paste as it is says so; the demo's table and compute line use it."""

from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import random_adapter

from commandv_interp.app.demo import format_transfer_tables
from commandv_interp.pipeline.labels import (DISTILLATION_ONLY, PASTE, edit_label, polish_steps_of,
                                             transfer_label)


def _outcome(choice, pasted, polished_steps=None):
    polished = None
    if polished_steps is not None:
        polished = random_adapter(16, layers=(1,))
        polished.metadata["polish"] = {"steps": polished_steps}
    return SimpleNamespace(choice=choice, converters=object() if pasted else None, polished=polished)


@pytest.mark.parametrize("choice, pasted, steps, label", [
    ("scratch+polish/8", False, 8, DISTILLATION_ONLY),
    ("scratch+polish/4", False, 4, "distillation only (no paste)"),
    ("procrustes/depth/layers=4+polish/12", True, 12, "Command-V paste + 12 distillation steps"),
    ("interface/depth+polish/1", True, 1, "Command-V paste + 1 distillation step"),
    ("interface/depth", True, None, "Command-V paste"),
    ("pinv/depth", True, None, PASTE),
])
def test_planted_outcomes_get_their_label(choice, pasted, steps, label):
    assert transfer_label(_outcome(choice, pasted, steps)) == label


def test_steps_come_from_the_polished_adapter_when_the_choice_does_not_name_them():
    assert transfer_label(_outcome("finalist", True, 7)) == "Command-V paste + 7 distillation steps"
    assert polish_steps_of("interface/similarity") == 0
    with pytest.raises(ValueError, match="how many distillation steps"):
        polish_steps_of("finalist", SimpleNamespace(metadata={}))


def test_impossible_outcomes_are_refused():
    with pytest.raises(ValueError, match="applies nothing"):
        transfer_label(_outcome("recipient (no paste)", False))
    with pytest.raises(ValueError, match="not a transfer outcome"):
        transfer_label(SimpleNamespace(choice="x"))
    with pytest.raises(ValueError, match="no edit"):
        edit_label(False, 0)
    with pytest.raises(ValueError, match="polish_steps"):
        edit_label(True, -1)


def _planted_table(label: str) -> pd.DataFrame:
    rows = []
    for condition, name in (("recipient_base", "recipient base"), ("command_v", f"recipient + {label}"),
                            ("donor_adapter", "donor + adapter"),
                            ("recipient_finetune", "recipient + direct ReFT finetune")):
        rows += [{"behavior": "cot", "condition": condition, "label": name, "metric": m, "value": v}
                 for m, v in (("cot_format", 0.5), ("accuracy", 0.25))]
    rows += [{"behavior": "cot", "condition": c, "label": "", "metric": m, "value": v}
             for c, m, v in (("command_v", "wall_s", 1.5), ("command_v", "flops", 2e9),
                             ("recipient_finetune", "wall_s", 30.0), ("recipient_finetune", "flops", 4e11))]
    return pd.DataFrame(rows)


def test_the_demo_table_says_distillation_only_for_a_planted_scratch_choice():
    label = transfer_label(_outcome("scratch+polish/8", False, 8))
    text = format_transfer_tables(_planted_table(label))
    assert "| recipient + distillation only (no paste) | 0.50 | 0.25 |" in text
    assert "compute: distillation only (no paste) 1.5 s" in text
    assert "Command-V" not in text
    pasted = format_transfer_tables(_planted_table(transfer_label(_outcome("ridge/depth+polish/4", True, 4))))
    assert "| recipient + Command-V paste + 4 distillation steps |" in pasted
    assert "compute: Command-V paste + 4 distillation steps 1.5 s" in pasted


def test_the_transfer_command_labels_a_planted_scratch_choice(tiny_dir, tmp_path):
    """`commandv transfer --start scratch` plants the distillation-only outcome: the report, the summary and --json
    say "distillation only (no paste)", never Command-V."""
    import json

    from typer.testing import CliRunner

    import commandv_interp as cv
    from commandv_interp.app.cli import app
    from conftest import random_prompts

    cv.save_adapter(random_adapter(32, layers=(0, 2), scale=1.0, seed=1), tmp_path / "adapter")
    (tmp_path / "prompts.txt").write_text("\n".join(random_prompts(16, seed=12)) + "\n")
    run = CliRunner().invoke(app, ["transfer", str(tiny_dir / "llama"), str(tiny_dir / "gpt2"),
                                   str(tmp_path / "adapter"), str(tmp_path / "prompts.txt"), "--out",
                                   str(tmp_path / "t"), "--start", "scratch", "--polish-steps", "4", "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["label"] == DISTILLATION_ONLY
    report = (tmp_path / "t" / "report.md").read_text()
    assert f"Applied: **{DISTILLATION_ONLY}**" in report and "No paste was kept" in report
    assert "was then polished" not in report
