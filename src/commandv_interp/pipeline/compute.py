"""Consumes a :class:`~commandv_interp.pipeline.result.Transfer`, produces where its FLOPs went: one row per part of
:func:`~commandv_interp.pipeline.label_free.transfer` (the setup, the surrogate's fit, the paste search, the
polish's training and scoring, the scale search), each as FLOPs, as a share of the whole call and as a share of the
estimated finetune that the polish's budget is a share of.

Everything is read off what the transfer records: its total ``flops``, the candidates table (each row's
``fit_flops``, its training, and ``score_flops``, its scoring) and the surrogate's ``surrogate_flops`` (a LoRA or
steering donor's). The setup is what is left: the donor's answers with and without its edit, and the profiles.

>>> compute_table(result)[["part", "share_of_finetune"]]  # doctest: +SKIP
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["compute_table", "PARTS", "KEYS"]

PARTS = ("setup: donor answers and profiles", "surrogate fit (LoRA or steering donor)",
         "paste search: scoring the pastes (stages 0–2)", "polish: training", "polish: scoring its rounds",
         "scale search: scoring (stage 4)")
"""The parts of a transfer's compute, in the order they run."""
KEYS = ("setup", "surrogate", "paste_search", "polish_training", "polish_scoring", "scale_search")
"""The parts' short names (the ``key`` column), one per entry of :data:`PARTS`."""


def compute_table(transfer) -> pd.DataFrame:
    """Where ``transfer``'s FLOPs went (see the module doc): columns ``part``, ``key`` (:data:`KEYS`), ``flops``,
    ``share_of_call`` and ``share_of_finetune`` (NaN when no polish ran: the finetune is estimated by the polish, and
    its budget is a share of it). The rows add up to ``transfer.flops``.

    Raises:
        ValueError: the candidates table lacks the FLOPs columns, or its rows add up to more than the call's FLOPs
            (a table from another transfer).
    """
    table = transfer.candidates
    missing = sorted({"stage", "fit_flops", "score_flops"} - set(table.columns))
    if missing:
        raise ValueError(f"the transfer's candidates table lacks {missing}: re-create it with commandv transfer")
    stage = table["stage"].astype(int)
    scoring = table["score_flops"].astype(float)
    training = table["fit_flops"].astype(float)
    surrogate = float(transfer.donor_adapter.metadata.get("surrogate_flops", 0.0) or 0.0)
    parts = {PARTS[1]: surrogate,
             PARTS[2]: float(scoring[stage <= 2].sum() + training[stage <= 2].sum()),
             PARTS[3]: float(training[stage == 3].sum()),
             PARTS[4]: float(scoring[stage == 3].sum()),
             PARTS[5]: float(scoring[stage >= 4].sum() + training[stage >= 4].sum())}
    setup = float(transfer.flops) - sum(parts.values())
    if setup < -1e-6 * max(float(transfer.flops), 1.0):
        raise ValueError(f"the candidates table's FLOPs ({sum(parts.values()):.3g}) exceed the transfer's "
                         f"({transfer.flops:.3g}): the table is not this transfer's")
    parts = {PARTS[0]: max(setup, 0.0)} | parts
    finetune = _finetune_estimate(table, transfer.config.polish_budget)
    total = float(transfer.flops)
    return pd.DataFrame([{"part": part, "key": KEYS[PARTS.index(part)], "flops": flops,
                          "share_of_call": flops / total if total > 0 else math.nan,
                          "share_of_finetune": flops / finetune if finetune > 0 else math.nan}
                         for part, flops in parts.items()])


def _finetune_estimate(table: pd.DataFrame, polish_budget: float) -> float:
    """The estimated finetune's FLOPs, read back from a polish round's budget (``budget = share × estimate``); NaN
    when no round ran."""
    if "polish_budget_flops" not in table.columns:
        return math.nan
    budgets = pd.to_numeric(table["polish_budget_flops"], errors="coerce").dropna()
    return float(budgets.iloc[0]) / polish_budget if len(budgets) else math.nan
