"""App (demo, benchmarks): consumes a donor and a recipient zoo model and a :class:`Derivation` per behavior,
produces the transfer table: Command-V's scores beside the baselines, with costs, as tidy rows.

The four conditions per behavior, all on the held-out test prompts without cue: ``recipient_base`` (the recipient
alone), ``command_v`` (the donor's adapter pasted into the recipient), ``donor_adapter`` (the donor with its own
adapter) and ``recipient_finetune`` (the recipient with an adapter of the same kind and rank trained directly on it:
the zoo's own adapter of the recipient, whose training record gives the direct-finetune cost). Every row carries a
``label`` saying what was applied: for ``command_v`` the transfer's outcome
(:func:`~commandv_interp.pipeline.labels.transfer_label`: "recipient + Command-V paste", "… + N distillation steps"
or "recipient + distillation only (no paste)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from commandv_interp.access import ModelAccess
from commandv_interp.paste import apply_adapter, paste
from commandv_interp.pipeline import Derivation, Transfer
from commandv_interp.pipeline.labels import PASTE, transfer_label
from commandv_interp.types import PositionRule
from commandv_interp.zoo.catalog import load_adapter, manifest
from commandv_interp.zoo.evaluate import evaluate
from commandv_interp.zoo.world import Behavior

__all__ = ["CONDITIONS", "CONDITION_LABELS", "command_v_label", "transfer_rows"]

CONDITIONS = ("recipient_base", "command_v", "donor_adapter", "recipient_finetune")
CONDITION_LABELS = {"recipient_base": "recipient base", "donor_adapter": "donor + adapter",
                    "recipient_finetune": "recipient + direct ReFT finetune"}
"""The label of every condition but ``command_v``, whose label says what the transfer applied."""


def command_v_label(derivation: Derivation | Transfer) -> str:
    """What the ``command_v`` condition applies: a :class:`Transfer`'s outcome, or a derivation's paste."""
    return transfer_label(derivation) if isinstance(derivation, Transfer) else PASTE


def _manifest_rates(model: str, behavior: str, condition: str) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in manifest()["behavior_table"]
            if (r["model"], r["behavior"], r["condition"]) == (model, behavior, condition)}


def transfer_rows(donor: ModelAccess, recipient: ModelAccess,
                  derivation: Derivation | Transfer | Mapping[str, Derivation | Transfer],
                  behaviors: Sequence[Behavior] = ("refusal", "jailbreak", "cot"), positions: PositionRule = "last",
                  alpha: float = 1.0, limit: int | None = None, recompute: bool = False) -> pd.DataFrame:
    """Score the four conditions for each behavior (test split, no cue).

    Args:
        donor, recipient: zoo models (their ``name`` is the zoo name).
        derivation: from :func:`~commandv_interp.pipeline.derive` (pasted at ``alpha``) or a
            :class:`~commandv_interp.pipeline.Transfer` (pasted at its own α and positions) for these two models, one
            for all behaviors or one per behavior (adapter-aware converters are per behavior).
        limit: score only the first ``limit`` test prompts (then every condition is recomputed).
        recompute: recompute ``donor_adapter`` and ``recipient_finetune``. By default (and ``limit=None``) their
            rates are read from the zoo manifest, where ``zoo train`` measured them on the same full test split.

    Returns:
        Tidy rows ``donor, recipient, behavior, condition, label, metric, value``, plus the cost rows
        (``condition`` ``command_v``/``recipient_finetune``, metrics ``wall_s`` and ``flops``).
    """
    rows = []
    labels: dict[str, str] = {}

    def add(behavior: str, condition: str, rates: dict[str, float]) -> None:
        label = CONDITION_LABELS.get(condition) or f"recipient + {labels[behavior]}"
        rows.extend({"donor": donor.name, "recipient": recipient.name, "behavior": behavior, "condition": condition,
                     "label": label, "metric": k, "value": float(v)} for k, v in rates.items())

    per_behavior = derivation if isinstance(derivation, Mapping) else {b: derivation for b in behaviors}  # type: ignore[misc]
    missing = [b for b in behaviors if b not in per_behavior]
    if missing:
        raise ValueError(f"no derivation for behaviors {missing}; pass one per behavior or a single Derivation")
    for behavior in behaviors:
        adapter, d = load_adapter(donor.name, behavior), per_behavior[behavior]
        labels[behavior] = command_v_label(d)
        add(behavior, "recipient_base", evaluate(recipient, behavior, limit=limit))
        # a transfer applies what it chose (a paste of some layers, or the polished adapter)
        edit = d.paste(recipient) if isinstance(d, Transfer) else paste(recipient, adapter, d.converters,
                                                                         positions=positions, alpha=alpha)
        with edit:
            add(behavior, "command_v", evaluate(recipient, behavior, limit=limit))
        if recompute or limit is not None:
            with apply_adapter(donor, adapter):
                add(behavior, "donor_adapter", evaluate(donor, behavior, limit=limit))
            with apply_adapter(recipient, load_adapter(recipient.name, behavior)):
                add(behavior, "recipient_finetune", evaluate(recipient, behavior, limit=limit))
        else:
            add(behavior, "donor_adapter", _manifest_rates(donor.name, behavior, "adapter"))
            add(behavior, "recipient_finetune", _manifest_rates(recipient.name, behavior, "adapter"))
        cost = manifest()["models"][recipient.name]["adapters"][behavior]["training"]
        add(behavior, "command_v", {"wall_s": d.wall_s, "flops": d.flops})
        add(behavior, "recipient_finetune", {"wall_s": cost["wall_time_s"], "flops": cost["flops"]})
    return pd.DataFrame(rows)
