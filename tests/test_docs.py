"""docs/ pages carry no hand-copied numbers that could drift: the zoo's behavior tables equal the manifests'."""

import re
from pathlib import Path

from commandv_interp import zoo

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_zoo_page_behavior_table_equals_the_manifest():
    """Both worlds' tables: the main zoo's 18 rows and the held-out world's 8."""
    rows = re.findall(r"^\| (\S+) \| (refusal|jailbreak|cot) \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      (DOCS / "zoo.md").read_text(), flags=re.M)
    assert len(rows) == 18 + 8
    table = {(r["model"], r["behavior"], r["metric"], r["condition"]): r["value"]
             for w in zoo.WORLDS for r in zoo.manifest(world=w)["behavior_table"]}
    for model, behavior, metric, *values in rows:
        for condition, value in zip(("base", "cue", "adapter"), values):
            assert f"{table[(model, behavior, metric, condition)]:.2f}" == value, (model, behavior, metric, condition)
