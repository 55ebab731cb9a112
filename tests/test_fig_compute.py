"""analyses/fig_compute.py: the compute-by-part figure reads the label-free benchmark's tables and averages them
right; a table without the per-part columns is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import run_script

from commandv_interp.pipeline.compute import KEYS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analyses" / "fig_compute.py"


def _table(parts: dict[str, list[float]]) -> pd.DataFrame:
    n = len(next(iter(parts.values())))
    cols = {f"transfer_compute_{k}": parts.get(k, [0.0] * n) for k in KEYS}
    return pd.DataFrame(cols | {"transfer_flops_ratio": [sum(v) for v in zip(*cols.values())]})


def test_parts_mean_and_median_of_planted_tables(tmp_path, monkeypatch, capsys):
    a = _table({"setup": [0.01, 0.02, 0.03], "polish_training": [0.02, 0.02, 0.08]})
    b = _table({"setup": [0.04, 0.03], "paste_search": [0.01, 0.01]})
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    run_script(monkeypatch, SCRIPT, "--out", str(tmp_path / "f"), "--runs", f"world a={tmp_path / 'a.csv'}",
         f"world b={tmp_path / 'b.csv'}")
    out = pd.read_csv(tmp_path / "f" / "compute_parts.csv").set_index(["world", "key"])
    assert out.loc[("world a", "polish_training"), "mean"] == pytest.approx(0.04)
    assert out.loc[("world a", "polish_training"), "median"] == pytest.approx(0.02)
    assert out.loc[("world a", "setup"), "call_median"] == pytest.approx(0.04)  # totals 0.03, 0.04, 0.11
    assert out.loc[("world b", "setup"), "mean"] == pytest.approx(0.035)
    assert out.loc[("world b", "surrogate"), "mean"] == 0
    assert out.loc["world a"]["mean"].sum() == pytest.approx(a.transfer_flops_ratio.mean())  # the parts add up
    assert {p.suffix for p in (tmp_path / "f").iterdir()} == {".png", ".pdf", ".csv"}
    assert "the whole call's median is 4.0%–4.5%" in capsys.readouterr().out


def test_a_table_without_the_parts_is_refused(tmp_path, monkeypatch):
    pd.DataFrame({"transfer_flops_ratio": [0.1]}).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(SystemExit, match="lacks transfer_compute_setup"):
        run_script(monkeypatch, SCRIPT, "--out", str(tmp_path), "--runs", f"x={tmp_path / 'old.csv'}")
