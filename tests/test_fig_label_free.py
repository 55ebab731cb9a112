"""analyses/fig_label_free.py: the overview figure reads the label-free benchmark's tables and counts them right."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "fig_label_free.py"


def _table(meets: dict[str, list[bool]], flops: dict[str, list[float]]) -> pd.DataFrame:
    cols = {f"{m}_meets_bar": v for m, v in meets.items()} | {f"{m}_flops_ratio": v for m, v in flops.items()}
    return pd.DataFrame(cols)


def test_overview_counts_shares_and_medians_of_planted_tables(tmp_path, monkeypatch, capsys):
    a = _table({"transfer": [True, True, False, True], "paste": [False, True, False, False]},
               {"transfer": [0.01, 0.04, 0.02, 0.10], "paste": [0.01, 0.01, 0.03, 0.02]})
    b = _table({"transfer": [True, True], "paste": [True, True], "paper": [False, True]},
               {"transfer": [0.05, 0.07], "paste": [0.02, 0.04]})
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    run_script(monkeypatch, SCRIPT, "--out", str(tmp_path / "f"), "--runs", f"world a={tmp_path / 'a.csv'}",
         f"world b={tmp_path / 'b.csv'}")
    out = pd.read_csv(tmp_path / "f" / "label_free_overview.csv").set_index(["world", "method"])
    assert out.loc[("world a", "transfer"), "runs_meeting_bar"] == 3
    assert out.loc[("world a", "transfer"), "share_meeting_bar"] == 0.75
    assert out.loc[("world a", "transfer"), "median_flops_ratio"] == 0.03  # median of 0.01, 0.02, 0.04, 0.10
    assert out.loc[("world b", "paste"), "share_meeting_bar"] == 1.0
    assert pd.isna(out.loc[("world b", "paper"), "median_flops_ratio"])  # paper-exact has no FLOPs column
    assert ("world a", "paper") not in out.index  # a method a table lacks is left out
    assert {p.suffix for p in (tmp_path / "f").iterdir()} == {".png", ".pdf", ".csv"}
    assert "caption: cv.transfer meets the bar in 75%–100%" in capsys.readouterr().out


def test_overview_refuses_a_missing_table(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="expected WORLD=CSV"):
        run_script(monkeypatch, SCRIPT, "--out", str(tmp_path), "--runs", f"x={tmp_path / 'none.csv'}")
