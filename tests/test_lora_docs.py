"""docs/edits.md carries no hand-copied number that could drift: its zoo-edit tables equal
docs/figures/zoo_edits.csv and zoo_edits_heldout.csv (written by ``python -m commandv_interp.zoo.train_edits
[--world heldout]``) and name the scale each shipped steering vector stores."""

import re
from pathlib import Path

import pandas as pd

from commandv_interp.zoo.donor_edits import SIDE_METRIC, TARGET_METRIC, load_zoo_edit

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROW = re.compile(r"^\| (\S+) \| (refusal|jailbreak|cot) \| ([\d./ ]+) \| ([\d./ ]+) \| ([\d./ ]+) \| ([\d./ ]+) "
                 r"\((\d+), ([\d.]+)\) \| (yes|no) \| (yes|no) \|$", re.M)


def test_zoo_edit_tables_equal_the_measured_csvs():
    main = pd.read_csv(DOCS / "figures" / "zoo_edits.csv")
    heldout = pd.read_csv(DOCS / "figures" / "zoo_edits_heldout.csv")
    rows = ROW.findall((DOCS / "edits.md").read_text())
    assert len(rows) == 9 + 4
    for model, behavior, *cells, layer, scale, _, _ in rows:
        world = "heldout" if model in set(heldout.model) else "main"
        rates = heldout if world == "heldout" else main
        for edit, cell in zip(("base", "reft", "lora", "steering"), cells):
            got = rates[(rates.model == model) & (rates.behavior == behavior) & (rates.edit == edit)]
            values = got.set_index("metric").value
            want = f"{values[TARGET_METRIC[behavior]]:.2f}"
            if behavior in SIDE_METRIC:
                want += f" / {values[SIDE_METRIC[behavior]]:.2f}"
            assert cell.strip() == want, (model, behavior, edit)
        steering = load_zoo_edit(model, behavior, "steering", world=world)
        assert steering.layers == [int(layer)] and f"{steering.scale:g}" == scale
