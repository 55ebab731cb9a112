"""The zoo transfer benchmark's (``transfer.py``) verdicts, tables and figure, from its result tables: per behavior
the pairs meeting the target (labeled best variant, within the budget, label-free transfer, steering and distillation
baselines under the label-free bar), the medians of compute, the README's two tables and ``transfer.png``/``.pdf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from commandv_interp import plotting, zoo
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

_TOL = 1e-9  # rates are counts over n prompts: 0.9 × 0.8 must not fail 0.72 by a rounding error


def summarize_pairs(table: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for behavior, group in table.groupby("behavior", sort=False):
        target, side = BEHAVIOR_RATES[behavior]
        val = group.set_index(["donor", "recipient", "condition", "metric"])["value"]
        pairs = sorted({(d, r) for d, r in zip(group.donor, group.recipient)})
        ratios = [val[(d, r, "cv_best", target)] / max(val[(d, r, "recipient_finetune", target)], 1e-9)
                  for d, r in pairs]
        paper = [val[(d, r, "cv_paper", target)] / max(val[(d, r, "recipient_finetune", target)], 1e-9)
                 for d, r in pairs]
        c = costs[costs.behavior == behavior]
        ok = [val[(d, r, "cv_best", target)] >= 0.9 * val[(d, r, "recipient_finetune", target)] - _TOL
              and (side != "false_refusal" or val[(d, r, "cv_best", side)] <= val[(d, r, "recipient_finetune", side)])
              for d, r in pairs]
        at_budget = [val.get((d, r, "cv_budget", target), 0.0) for d, r in pairs]
        ok_budget = [b >= 0.9 * val[(d, r, "recipient_finetune", target)] - _TOL
                     and (side != "false_refusal"
                          or val.get((d, r, "cv_budget", side), 1.0) <= val[(d, r, "recipient_finetune", side)])
                     for b, (d, r) in zip(at_budget, pairs)]
        def bar(condition: str, d: str, r: str) -> bool:  # issue 19's bar: FR within 0.02 of the finetune's
            ft_t, ft_s = val[(d, r, "recipient_finetune", target)], val[(d, r, "recipient_finetune", side)]
            return bool(val[(d, r, condition, target)] >= 0.9 * ft_t - _TOL
                        and (side != "false_refusal" or val[(d, r, condition, side)] <= ft_s + 0.02 + _TOL)
                        and (behavior != "cot" or val[(d, r, condition, side)] >= 0.9 * ft_s - _TOL))

        rows.append({"behavior": behavior, "target": target, "pairs": len(pairs), "pairs_meeting_target": sum(ok),
                     "pairs_transfer": sum(bar("cv_transfer", d, r) for d, r in pairs),
                     "pairs_steering": sum(bar("steering_affine", d, r) for d, r in pairs),
                     "pairs_distill": sum(bar("distill_scratch", d, r) for d, r in pairs),
                     "median_distill_flops": float(np.median(c.distill_flops / c.finetune_flops)),
                     "median_transfer_flops": float(np.median(c.cv_transfer_flops / c.finetune_flops)),
                     "median_transfer_time": float(np.median(c.cv_transfer_s / c.finetune_s)),
                     "median_steering_flops": float(np.median(c.steering_flops / c.finetune_flops)),
                     "pairs_meeting_target_within_budget": sum(ok_budget),
                     "median_best_over_finetune": float(np.median(ratios)),
                     "median_budget_over_finetune": float(np.median(
                         [b / max(val[(d, r, "recipient_finetune", target)], 1e-9)
                          for b, (d, r) in zip(at_budget, pairs)])),
                     "median_paper_over_finetune": float(np.median(paper)),
                     "median_compute_ratio_flops": float(np.median(c.cv_best_flops / c.finetune_flops)),
                     "median_compute_ratio_flops_budget": float(np.median(c.cv_budget_flops / c.finetune_flops)),
                     "median_compute_ratio_time": float(np.median(c.cv_best_s / c.finetune_s)),
                     "median_compute_ratio_time_with_selection": float(np.median((c.cv_best_s + c.selection_s)
                                                                                 / c.finetune_s)),
                     "side_metric": side,
                     "median_side_best": float(np.median([val[(d, r, "cv_best", side)] for d, r in pairs])),
                     "median_side_finetune": float(np.median([val[(d, r, "recipient_finetune", side)]
                                                              for d, r in pairs]))})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, costs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The README's two tables: one row per pair × behavior (target / side metric per condition), then the summary."""
    val = table.set_index(["donor", "recipient", "behavior", "condition", "metric"])
    short = lambda name: name.split("-")[0]  # noqa: E731

    def cell(d, r, b, condition):
        target, side = BEHAVIOR_RATES[b]
        if (d, r, b, condition, target) not in val.index:
            return "–"
        return f"{val.loc[(d, r, b, condition, target)].value:.2f} / {val.loc[(d, r, b, condition, side)].value:.2f}"

    lines = ["| donor → recipient | behavior | paper-exact | paper + norm α | label-free transfer | distillation from "
             "scratch | steering (affine) | best variant [95% CI] | within 1% FLOPs | direct finetune | donor + adapter | "
             "nulls (random / shuffled) | variant chosen on train prompts | what the label-free transfer applied |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (d, r), _ in table.groupby(["donor", "recipient"], sort=True):
        for b in [b for b in zoo.BEHAVIORS if b in set(table.behavior)]:
            target = BEHAVIOR_RATES[b][0]
            best = val.loc[(d, r, b, "cv_best", target)]
            c = costs[(costs.donor == d) & (costs.recipient == r) & (costs.behavior == b)].iloc[0]
            nulls = [val.loc[(d, r, b, n, target)].value for n in ("null_random_delta", "null_shuffled")]
            lines.append(
                f"| {short(d)} → {short(r)} | {b} | {cell(d, r, b, 'cv_paper')} | "
                f"{cell(d, r, b, 'cv_paper_norm_matched')} | {cell(d, r, b, 'cv_transfer')} | "
                f"{cell(d, r, b, 'distill_scratch')} | {cell(d, r, b, 'steering_affine')} | **{cell(d, r, b, 'cv_best')}** "
                f"[{best.ci_low:.2f}, {best.ci_high:.2f}] | {cell(d, r, b, 'cv_budget')} | "
                f"{cell(d, r, b, 'recipient_finetune')} | {cell(d, r, b, 'donor_adapter')} | "
                f"{nulls[0]:.2f} / {nulls[1]:.2f} | `{c.best_variant}` ({c.cv_best_flops / c.finetune_flops:.3f}) | "
                f"{c.transfer_label} |")
    lines += ["", "| behavior | pairs ≥ 0.9 × finetune (FR ≤ finetune's) | label-free transfer: pairs (FR ≤ "
              "finetune's + 0.02) / FLOPs / wall ratio | distillation from scratch: pairs / FLOPs ratio | steering: "
              "pairs / FLOPs ratio | median best / finetune | median paper-exact / finetune | compute ratio, FLOPs "
              "(median) | within 1% FLOPs: pairs / median ratio | wall time without / with the search |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, x in summary.iterrows():
        lines.append(f"| {x.behavior} | {x.pairs_meeting_target} of {x.pairs} | {x.pairs_transfer} of {x.pairs} / "
                     f"{x.median_transfer_flops:.3f} / {x.median_transfer_time:.3f} | {x.pairs_distill} of "
                     f"{x.pairs} / {x.median_distill_flops:.3f} | {x.pairs_steering} of "
                     f"{x.pairs} / {x.median_steering_flops:.3f} | {x.median_best_over_finetune:.2f} | "
                     f"{x.median_paper_over_finetune:.2f} | {x.median_compute_ratio_flops:.3f} | "
                     f"{x.pairs_meeting_target_within_budget} of {x.pairs} / {x.median_budget_over_finetune:.2f} | "
                     f"{x.median_compute_ratio_time:.3f} / {x.median_compute_ratio_time_with_selection:.2f} |")
    return "\n".join(lines) + "\n"


FIGURE_BARS = {  # condition: (tick label, color), in the figure's order
    "recipient_base": ("recipient alone", "gray"),
    "cv_paper": ("paper-exact", "tab:orange"),
    "cv_paper_norm_matched": ("paper, norm-matched α", "tab:brown"),
    "steering_affine": ("steering vector (affine)", "tab:pink"),
    "distill_scratch": ("distillation from scratch", "olive"),
    "cv_transfer": ("label-free transfer", "tab:blue"),
    "cv_best": ("labeled best variant", "tab:cyan"),
    "cv_budget": ("labeled, ≤ 1% FLOPs", "teal"),
    "recipient_finetune": ("recipient finetune", "tab:green"),
    "donor_adapter": ("donor + adapter", "tab:purple"),
    "null_random_delta": ("null: random delta", "lightgray"),
    "null_shuffled": ("null: shuffled fit", "lightgray"),
}


def figure(table: pd.DataFrame, out: Path) -> None:
    """One panel per behavior: each condition's target rate, mean over pairs with the mean 95% CI, and the
    recipient finetune's mean as a dashed reference line."""
    import matplotlib.pyplot as plt

    conditions = [c for c in FIGURE_BARS if c in set(table.condition)]
    behaviors = list(dict.fromkeys(table.behavior))
    fig, axes = plt.subplots(1, len(behaviors), figsize=(5 * len(behaviors), 4.4), squeeze=False)
    for ax, behavior in zip(axes[0], behaviors):
        target = BEHAVIOR_RATES[behavior][0]
        sub = table[(table.behavior == behavior) & (table.metric == target)]
        means = [sub[sub.condition == c].value.mean() for c in conditions]
        lows = [m - sub[sub.condition == c].ci_low.mean() for c, m in zip(conditions, means)]
        highs = [sub[sub.condition == c].ci_high.mean() - m for c, m in zip(conditions, means)]
        ax.bar(range(len(conditions)), means, yerr=[lows, highs], capsize=3,
               color=[FIGURE_BARS[c][1] for c in conditions])
        finetune = sub[sub.condition == "recipient_finetune"].value.mean()
        ax.axhline(finetune, color="tab:green", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(conditions)), [FIGURE_BARS[c][0] for c in conditions], rotation=45, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{target.replace('_', ' ')} rate (mean over pairs)")
        ax.set_title(behavior)
    fig.suptitle("Command-V on the zoo, held-out test prompts (bars: mean 95% CI; dashed: the recipient finetune)")
    fig.tight_layout()
    plotting.save_figure(fig, out / "transfer")
