"""The README's Python quickstart, extracted and executed exactly as written, and the README's size."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _cli_lines() -> list[list[str]]:
    blocks = re.findall(r"## Command line\n\n```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [shlex.split(line) for line in blocks[0].strip().splitlines()]


def test_readme_is_short_and_has_one_quickstart():
    assert README.stat().st_size <= 10_000
    assert len(_python_blocks()) == 1
    assert all(line[0] == "commandv" for line in _cli_lines())


@pytest.mark.slow
def test_readme_cli_block_runs_and_its_transfer_works(tmp_path, monkeypatch):
    """Every line of the README's CLI block, as written, in a fresh folder; the transfer it writes carries the
    behavior (checked with labels on held-out prompts) and the step-by-step paste writes its generations."""
    from typer.testing import CliRunner

    from commandv_interp import zoo
    from commandv_interp.app.cli import app

    monkeypatch.chdir(tmp_path)
    for argv in _cli_lines():
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, (argv, result.output[-2000:])
    import commandv_interp as cv

    recipient = zoo.load_model("gpt2-4x96")
    with cv.apply_adapter(recipient, cv.load_adapter(tmp_path / "jb" / "compiled")):
        rates = zoo.evaluate(recipient, "jailbreak")
    assert rates["compliance"] >= 0.9 and rates["false_refusal"] <= 0.05, rates
    assert (tmp_path / "jb-analysis" / "report.md").exists() and (tmp_path / "gen.jsonl").exists()


@pytest.mark.slow
def test_readme_quickstart_runs_and_its_paste_changes_the_recipient():
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_python_blocks()[0], str(README), "exec"), namespace)
    recipient, test = namespace["recipient"], namespace["test"]
    result = namespace["result"]
    assert not recipient.active_edits  # the paste's hooks came off
    plain = recipient.generate(recipient.encode(test), max_new_tokens=6)
    with result.paste():
        pasted = recipient.generate(recipient.encode(test), max_new_tokens=6)
    assert pasted != plain, "the chosen paste changes none of the four test answers"
    assert result.choice in set(result.candidates.candidate)
    assert "criterion" in out.getvalue()
