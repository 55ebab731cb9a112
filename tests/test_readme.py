"""The README's Python quickstart, extracted and executed exactly as written, and the README's size."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_is_short_and_has_one_quickstart():
    assert README.stat().st_size <= 10_000
    assert len(_python_blocks()) == 1


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
