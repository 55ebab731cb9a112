"""Consumes the table of runs ``benchmarks/label_free.py`` writes (one row per cell and transfer seed), produces its
summaries: per method, the runs meeting the bar, the cells meeting it at every seed, nothing lost and the median
compute; per cell, the worst seed and what the transfer applied there; for ``--edit``, the same per output kind.
``label_free.py`` imports them from here (and re-exports them)."""

from __future__ import annotations

import pandas as pd

from commandv_interp.pipeline.labels import BACKPROP_FREE_PASTE, PAPER_EXACT_PASTE

METHODS = ("transfer", "paste", "distill", "steering", "paper")
WEAK_BAR = 0.5  # a finetune below this target rate makes a weak bar (reported apart in the summary)
METHOD_LABELS = {"transfer": "`cv.transfer` (defaults)", "paste": BACKPROP_FREE_PASTE,
                 "distill": "distillation from scratch (`start=\"scratch\"`)", "steering": "steering vector",
                 "paper": PAPER_EXACT_PASTE}
EDIT_OUTPUTS = ("transfer", "paste", "distill", "lora")
EDIT_LABELS = {"transfer": "ReFT output (`cv.transfer`)", "paste": "its paste before the polish",
               "distill": "distillation from scratch", "lora": "PEFT LoRA output (`Transfer.to_peft`)"}




def edit_markdown(table: pd.DataFrame, header: str) -> str:
    """``--edit``: per output kind, runs meeting the bar, cells meeting it at every seed, median FLOPs share
    (everything included); per cell, each kind's runs meeting the bar and its worst seed."""
    cells = table.groupby(["donor", "recipient", "behavior"], sort=False)
    lines = [header, "", "| output | runs meeting the bar | cells meeting it at every seed | median FLOPs / finetune "
             "| max FLOPs / finetune |", "|---|---|---|---|---|"]
    for m in EDIT_OUTPUTS:
        lines.append(f"| {EDIT_LABELS[m]} | **{int(table[f'{m}_meets_bar'].sum())} of {len(table)}** | "
                     f"{int(cells[f'{m}_meets_bar'].all().sum())} of {cells.ngroups} | "
                     f"{_pct(table[f'{m}_flops_ratio'].median())} | {_pct(table[f'{m}_flops_ratio'].max())} |")
    lines += ["", "| donor → recipient | behavior | finetune | " + " | ".join(
        f"{EDIT_LABELS[m].split(' (')[0]}: runs, worst seed" for m in ("transfer", "lora", "distill")) + " |",
        "|---|---|---|---|---|---|"]
    for (d, r, b), runs in cells:
        parts = []
        for m in ("transfer", "lora", "distill"):
            w = worst_seed(runs, m)
            parts.append(f"{int(runs[f'{m}_meets_bar'].sum())}/{len(runs)}, seed {int(w.seed)}: "
                         f"{w[f'{m}_target']:.2f} / {w[f'{m}_side']:.2f}")
        first = runs.iloc[0]
        lines.append(f"| {d} → {r} | {b} | {first.finetune_target:.2f} / {first.finetune_side:.2f} | "
                     + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def worst_seed(runs: pd.DataFrame, method: str) -> pd.Series:
    """The run of a cell that misses the bar with the lowest target rate (or, if all meet it, the lowest target)."""
    key = runs.assign(_ok=runs[f"{method}_meets_bar"].astype(int), _t=runs[f"{method}_target"])
    return key.sort_values(["_ok", "_t", "seed"], kind="stable").iloc[0]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: runs meeting the bar, cells meeting it at every seed, nothing lost, median compute."""
    rows = []
    cells = table.groupby(["donor", "recipient", "behavior"], sort=False)
    multi = table[table.transfer_nothing_lost.notna()]
    for m in METHODS:
        rows.append({"method": m, "runs": len(table), "runs_meeting_bar": int(table[f"{m}_meets_bar"].sum()),
                     "share_meeting_bar": float(table[f"{m}_meets_bar"].mean()),
                     "cells": cells.ngroups, "cells_meeting_bar_every_seed": int(cells[f"{m}_meets_bar"].all().sum()),
                     "multi_token_runs": len(multi),
                     "nothing_lost_runs": int(multi[f"{m}_nothing_lost"].sum()) if len(multi) else 0,
                     "median_flops_ratio": float(table[f"{m}_flops_ratio"].median())
                     if f"{m}_flops_ratio" in table else float("nan"),
                     "median_wall_ratio": float(table[f"{m}_wall_ratio"].median())
                     if f"{m}_wall_ratio" in table else float("nan")})
    return pd.DataFrame(rows)


def worse_than_both(table: pd.DataFrame) -> list[str]:
    """Cells where ``cv.transfer`` meets the bar in fewer runs than its paste alone and fewer than the distillation
    from scratch (the issue's "no cell worse than both"), as ``donor → recipient behavior``."""
    cells = table.groupby(["donor", "recipient", "behavior"], sort=False)
    counts = cells[["transfer_meets_bar", "paste_meets_bar", "distill_meets_bar"]].sum()
    worse = counts[(counts.transfer_meets_bar < counts.paste_meets_bar)
                   & (counts.transfer_meets_bar < counts.distill_meets_bar)]
    return [f"{d} → {r} {b}" for d, r, b in worse.index]


def weak_bars(table: pd.DataFrame) -> list[str]:
    """Cells whose bar says little: the recipient's own finetune reaches the target rate on fewer than
    ``WEAK_BAR`` of the test prompts, so that 0.9 × its rate asks for little or nothing of a transfer."""
    cells = table.groupby(["donor", "recipient", "behavior"], sort=False).finetune_target.first()
    return [f"{d} → {r} {b}" for (d, r, b), v in cells.items() if v < WEAK_BAR]


def _pct(x: float) -> str:
    return "" if x != x else f"{100 * x:.1f}%"


def markdown(table: pd.DataFrame, header: str) -> str:
    lines = [header, "", "| method | runs meeting the bar | cells meeting it at every seed | nothing lost "
             "(multi-token runs) | median FLOPs / finetune | median wall / finetune |", "|---|---|---|---|---|---|"]
    for s in summary(table).itertuples():
        lost = f"{s.nothing_lost_runs} of {s.multi_token_runs}" if s.multi_token_runs else "–"
        lines.append(f"| {METHOD_LABELS[s.method]} | **{s.runs_meeting_bar} of {s.runs}** "
                     f"({100 * s.share_meeting_bar:.0f}%) | {s.cells_meeting_bar_every_seed} of {s.cells} | {lost} | "
                     f"{_pct(s.median_flops_ratio)} | {_pct(s.median_wall_ratio)} |")
    weak = weak_bars(table)
    if weak:
        keep = ~table.apply(lambda row: f"{row.donor} → {row.recipient} {row.behavior}" in weak, axis=1)
        lines += ["", f"Cells whose bar says little (the recipient's own finetune reaches the target on fewer than "
                      f"{WEAK_BAR:.0%} of the test prompts): {len(weak)} ({'; '.join(weak)}). Without them, "
                      f"`cv.transfer` meets the bar in {int(table[keep].transfer_meets_bar.sum())} of "
                      f"{int(keep.sum())} runs."]
    worse = worse_than_both(table)
    lines += ["", f"Cells where `cv.transfer` meets the bar in fewer runs than both its paste and the distillation from "
                  f"scratch: {len(worse)}" + (f" ({'; '.join(worse)})" if worse else "") + "."]
    lines += ["", "| donor → recipient | behavior | finetune (target / side) | transfer runs meeting the bar | "
              "transfer's worst seed (target / side) | what it applied there | paste | distillation | steering | "
              "paper-exact | nothing lost |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (d, r, b), runs in table.groupby(["donor", "recipient", "behavior"], sort=False):
        w = worst_seed(runs, "transfer")
        n = len(runs)
        counts = [f"{int(runs[f'{m}_meets_bar'].sum())}/{n}" for m in ("paste", "distill", "steering", "paper")]
        lost = "–" if runs.transfer_nothing_lost.isna().all() else f"{int(runs.transfer_nothing_lost.sum())}/{n}"
        lines.append(f"| {d} → {r} | {b} | {w.finetune_target:.2f} / {w.finetune_side:.2f} | "
                     f"{int(runs.transfer_meets_bar.sum())}/{n} | seed {int(w.seed)}: {w.transfer_target:.2f} / "
                     f"{w.transfer_side:.2f} | {w.label} | " + " | ".join(counts) + f" | {lost} |")
    return "\n".join(lines) + "\n"
