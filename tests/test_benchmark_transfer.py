"""The transfer benchmark's verdict logic (``benchmarks/transfer.py``) on planted result tables: which pairs meet
the issue's target, the medians, and the README tables built from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (donor, recipient): cv_best refusal / false refusal, cv_budget refusal / false refusal, finetune refusal / FR
PLANTED = {("a-1", "b-1"): ((0.95, 0.00), (0.95, 0.00), (1.00, 0.00)),  # meets, also within budget
           ("b-1", "a-1"): ((1.00, 0.05), (0.50, 0.00), (1.00, 0.00)),  # refuses more benign prompts than the finetune
           ("a-1", "c-1"): ((0.89, 0.00), (0.89, 0.00), (1.00, 0.00)),  # just under 0.9 × finetune
           ("c-1", "a-1"): ((0.72, 0.10), (0.10, 0.00), (0.80, 0.10))}  # 0.9 of a weaker finetune, same FR
# cv_transfer under the label-free bar (false refusal within 0.02 of the finetune's): meets, 0.03 over, exactly 0.9,
# too weak
TRANSFER = {("a-1", "b-1"): (0.92, 0.02), ("b-1", "a-1"): (1.00, 0.03), ("a-1", "c-1"): (0.90, 0.00),
            ("c-1", "a-1"): (0.50, 0.00)}


def _planted() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, costs = [], []
    for (d, r), ((best, best_fr), (cheap, cheap_fr), (ft, ft_fr)) in PLANTED.items():
        conditions = {"cv_best": (best, best_fr), "cv_budget": (cheap, cheap_fr), "recipient_finetune": (ft, ft_fr),
                      "cv_paper": (0.0, 0.0), "cv_paper_norm_matched": (0.1, 0.0), "donor_adapter": (1.0, 0.0),
                      "null_random_delta": (0.02, 0.0), "null_shuffled": (0.03, 0.0),
                      "cv_transfer": TRANSFER[(d, r)], "steering_affine": (1.0, 1.0),
                      "distill_scratch": (0.95, 0.0) if (d, r) == ("a-1", "b-1") else (0.2, 0.0)}
        for condition, (target, side) in conditions.items():
            for metric, value in (("refusal", target), ("false_refusal", side)):
                rows.append({"donor": d, "recipient": r, "behavior": "refusal", "condition": condition,
                             "metric": metric, "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05,
                             "n": 160})
        costs.append({"donor": d, "recipient": r, "behavior": "refusal", "cv_best_flops": 2.0, "cv_budget_flops": 0.5,
                      "finetune_flops": 100.0, "cv_best_s": 1.0, "selection_s": 9.0, "finetune_s": 20.0,
                      "best_variant": "interface/depth/task/alpha=1", "cv_transfer_flops": 3.0,
                      "cv_transfer_s": 0.4, "steering_flops": 1.0, "distill_flops": 4.0, "distill_s": 0.5,
                      "transfer_label": "distillation only (no paste)" if (d, r) == ("b-1", "a-1")
                      else "Command-V paste + 12 distillation steps"})
    return pd.DataFrame(rows), pd.DataFrame(costs)


def test_summary_counts_only_pairs_at_09_of_the_finetune_without_more_false_refusal(bench):
    table, costs = _planted()
    s = bench.summarize_pairs(table, costs).iloc[0]
    assert s.pairs == 4
    assert s.pairs_meeting_target == 2  # a-1 → b-1 and c-1 → a-1 (0.72 = 0.9 × 0.80, FR equal)
    assert s.pairs_meeting_target_within_budget == 1
    assert s.median_best_over_finetune == pytest.approx((0.9 + 0.95) / 2)
    assert s.median_budget_over_finetune == pytest.approx((0.5 + 0.89) / 2)
    assert s.median_compute_ratio_flops == pytest.approx(0.02)
    assert s.median_compute_ratio_flops_budget == pytest.approx(0.005)
    assert s.median_compute_ratio_time_with_selection == pytest.approx(0.5)
    assert s.pairs_transfer == 2 and s.pairs_steering == 0  # steering refuses every benign prompt
    assert s.median_transfer_flops == pytest.approx(0.03) and s.median_transfer_time == pytest.approx(0.02)
    assert s.median_steering_flops == pytest.approx(0.01)
    assert s.pairs_distill == 1 and s.median_distill_flops == pytest.approx(0.04)  # only a-1 → b-1 reaches 0.9


def test_markdown_tables_carry_the_planted_cells(bench):
    table, costs = _planted()
    md = bench.markdown(table, costs, bench.summarize_pairs(table, costs))
    row = next(line for line in md.splitlines() if line.startswith("| b → a | refusal"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "1.00 / 0.03"  # label-free transfer
    assert cells[5] == "0.20 / 0.00"  # distillation from scratch
    assert cells[6] == "1.00 / 1.00"  # steering
    assert cells[7] == "**1.00 / 0.05** [0.95, 1.05]"  # best variant with its CI
    assert cells[8] == "0.50 / 0.00"  # within budget
    assert cells[9] == "1.00 / 0.00"  # finetune
    assert cells[12] == "`interface/depth/task/alpha=1` (0.020)"
    assert cells[13] == "distillation only (no paste)"  # what the label-free transfer applied
    assert ("| refusal | 2 of 4 | 2 of 4 / 0.030 / 0.020 | 1 of 4 / 0.040 | 0 of 4 / 0.010 | 0.92 | 0.00 | 0.020 | "
            "1 of 4 / 0.70 |") in md


def test_grid_profile_sets_name_the_task_size(bench):
    from commandv_interp.zoo.prompt_sets import profile_prompts

    assert bench.set_prompts("task/16", "cot") == profile_prompts("task", "cot", task_size=16)
    assert len(bench.set_prompts("task/16", "cot")) == 64 and len(bench.set_prompts("task", "cot")) == 128
    assert bench.set_prompts("profile", "cot") == profile_prompts("profile")
