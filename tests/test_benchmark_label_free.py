"""The label-free benchmark's verdicts (``benchmarks/label_free.py``) on planted rates: the bar, nothing lost, the
per-method shares over cell × seed runs, the worst seed and the seed specs."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "label_free.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("label_free_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _cell(bench, target, side, ft, reference=None):
    return bench.Cell("d", "r", "b", None, None, None, [], lambda m, n: {}, target, side,
                      {"rates": ft, "flops": 1.0, "wall_s": 1.0}, reference)


def test_the_bar_per_side_kind(bench):
    refusal = _cell(bench, "refusal", "false_refusal", {"refusal": 1.0, "false_refusal": 0.01})
    assert bench.meets(refusal, {"refusal": 0.90, "false_refusal": 0.03})  # 0.9 × and + 0.02, both at the edge
    assert not bench.meets(refusal, {"refusal": 0.89, "false_refusal": 0.0})
    assert not bench.meets(refusal, {"refusal": 1.0, "false_refusal": 0.04})
    steps = _cell(bench, "format", "accuracy", {"format": 0.8, "accuracy": 0.5}, {"donor_adapter": 0.9,
                                                                                  "recipient_base": 0.6})
    assert bench.meets(steps, {"format": 0.72, "accuracy": 0.45})
    assert not bench.meets(steps, {"format": 1.0, "accuracy": 0.44})
    assert bench.nothing_lost(steps, {"format": 1.0, "accuracy": 0.55}) == 1.0  # min(0.9, 0.6) − 0.05
    assert bench.nothing_lost(steps, {"format": 1.0, "accuracy": 0.54}) == 0.0
    assert bench.nothing_lost(refusal, {"refusal": 1.0, "false_refusal": 0.0}) != bench.nothing_lost(
        refusal, {"refusal": 1.0, "false_refusal": 0.0})  # NaN: not a multi-token cell


def _runs(bench) -> pd.DataFrame:
    rows = []
    planted = {("a", 0): (1.0, True), ("a", 1): (0.5, False), ("a", 2): (0.7, False), ("b", 0): (0.95, True),
               ("b", 1): (0.92, True), ("b", 2): (0.99, True)}
    for (cell, seed), (target, ok) in planted.items():
        row = {"donor": cell, "recipient": "r", "behavior": "x", "seed": seed, "finetune_target": 1.0,
               "finetune_side": 0.0, "transfer_nothing_lost": float("nan"),
               "label": "distillation only (no paste)" if seed == 1 else "Command-V paste"}
        for m in bench.METHODS:
            row[f"{m}_target"], row[f"{m}_side"] = target, 0.0
            row[f"{m}_meets_bar"] = ok if m == "transfer" else False
            row[f"{m}_nothing_lost"] = float("nan")
        for m in ("transfer", "paste", "distill", "steering"):
            row[f"{m}_flops_ratio"], row[f"{m}_wall_ratio"] = 0.01 * (seed + 1), 0.02
        rows.append(row)
    return pd.DataFrame(rows)


def test_summary_shares_cells_and_worst_seed(bench):
    table = _runs(bench)
    s = bench.summary(table).set_index("method")
    assert (s.loc["transfer", "runs_meeting_bar"], s.loc["transfer", "runs"]) == (4, 6)
    assert s.loc["transfer", "cells_meeting_bar_every_seed"] == 1 and s.loc["paste", "runs_meeting_bar"] == 0
    assert s.loc["transfer", "median_flops_ratio"] == pytest.approx(0.02)
    worst = bench.worst_seed(table[table.donor == "a"], "transfer")
    assert int(worst.seed) == 1  # the failing run with the lowest target
    assert int(bench.worst_seed(table[table.donor == "b"], "transfer").seed) == 1  # all pass: the lowest target
    md = bench.markdown(table, "header")
    assert "**4 of 6** (67%)" in md
    assert "| a → r | x | 1.00 / 0.00 | 1/3 | seed 1: 0.50 / 0.00 | distillation only (no paste) |" in md


def test_cells_worse_than_both_the_paste_and_the_distillation(bench):
    table = _runs(bench)
    assert bench.worse_than_both(table) == []  # the paste and the distillation meet the bar nowhere
    table.loc[table.donor == "a", ["paste_meets_bar", "distill_meets_bar"]] = True  # both 3/3, transfer 1/3
    table.loc[(table.donor == "b") & (table.seed == 0), "distill_meets_bar"] = True  # b: 3/3 against 0/3 and 1/3
    assert bench.worse_than_both(table) == ["a → r x"]
    assert "fewer runs than both its paste and the distillation from scratch: 1 (a → r x)." in bench.markdown(table, "")


def test_cells_with_a_weak_bar_are_named_and_left_out_of_a_second_count(bench):
    table = _runs(bench)
    assert bench.weak_bars(table) == [] and "bar says little" not in bench.markdown(table, "")
    table.loc[table.donor == "a", "finetune_target"] = 0.3  # a finetune that hardly learned the behavior
    assert bench.weak_bars(table) == ["a → r x"]
    assert "(a → r x). Without them, `cv.transfer` meets the bar in 3 of 3 runs." in bench.markdown(table, "")


def test_seed_specs(bench):
    assert bench.parse_seeds("0-4") == [0, 1, 2, 3, 4] and bench.parse_seeds("0,2,5") == [0, 2, 5]
    assert bench.parse_seeds("1-2,7") == [1, 2, 7]
    for bad in ("x", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="seeds"):
            bench.parse_seeds(bad)
