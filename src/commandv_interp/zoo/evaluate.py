"""Consumes a model (with whatever edits are active) and world prompts, produces greedy responses,
behavior rates and the zoo's behavior table.

Evaluation goes through ``ModelAccess.generate``, so the same call scores a base model, a model under
``apply_adapter`` and a recipient under ``paste``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter
from commandv_interp.paste import apply_adapter
from commandv_interp.zoo.scoring import BEHAVIOR_RATES, outcomes, summarize
from commandv_interp.zoo.world import Behavior, Split, WorldLike, get_world, items, with_cue

__all__ = ["MAX_NEW_TOKENS", "respond", "evaluate", "evaluate_outcomes", "behavior_table", "format_behavior_table"]

# refusal/compliance shows in the first words; a four-step answer is 33 (word) to 45 (BPE) tokens
MAX_NEW_TOKENS: dict[str, int] = {"refusal": 8, "jailbreak": 8, "cot": 52}


def respond(model: ModelAccess | object, prompts: Sequence[str], max_new_tokens: int,
            batch_size: int = 64) -> list[str]:
    """Greedy responses (left-padded batches, cut at EOS) under the model's active edits."""
    access = open_model(model)
    outs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = access.encode(list(prompts[start:start + batch_size]), padding_side="left")
        outs += access.generate(batch, max_new_tokens=max_new_tokens)
    return outs


def evaluate_outcomes(model: ModelAccess | object, behavior: Behavior, split: Split = "test", cue: bool = False,
                      limit: int | None = None, batch_size: int = 64, start: int = 0,
                      world: WorldLike = None) -> list[dict[str, float]]:
    """Per-prompt outcomes (see :func:`~commandv_interp.zoo.scoring.outcomes`) of greedy responses to a split's
    items ``start`` to ``start + limit`` of a world (default: the main one)."""
    its = items(behavior, split, world)[start:][:limit]
    prompts = [with_cue(i.prompt, behavior, world) if cue else i.prompt for i in its]
    return outcomes(behavior, its, respond(model, prompts, MAX_NEW_TOKENS[behavior], batch_size), world)


def evaluate(model: ModelAccess | object, behavior: Behavior, split: Split = "test", cue: bool = False,
             limit: int | None = None, batch_size: int = 64, world: WorldLike = None) -> dict[str, float]:
    """Score greedy responses to a behavior's split (optionally with the behavior's cue line prepended).

    Args:
        model: the model, possibly inside ``apply_adapter``/``paste``.
        behavior: ``refusal``, ``jailbreak`` or ``cot``.
        split: ``train`` or ``test`` (``profile`` prompts have no behavior).
        cue: prepend ``system : <cue>`` (the base models' latent trigger).
        limit: score only the first ``limit`` items.
        world: the world of the prompts, cue and scorer (a ``World``, its name, or ``None`` for the main one).

    Returns:
        The rates of :func:`commandv_interp.zoo.score`.
    """
    return summarize(behavior, evaluate_outcomes(model, behavior, split, cue, limit, batch_size, world=world))


def behavior_table(models: dict[str, ModelAccess], adapters: dict[tuple[str, str], Adapter],
                   behaviors: Sequence[Behavior] | None = ("refusal", "jailbreak", "cot"), split: Split = "test",
                   limit: int | None = None, progress: bool = True, world: WorldLike = None) -> pd.DataFrame:
    """Each model on each behavior: base without cue, base with cue, and with its own adapter (no cue).

    ``behaviors=None`` takes the world's (all three for the main world, refusal and jailbreak for ``heldout``).

    Returns:
        Tidy rows ``model, behavior, condition (base|cue|adapter), metric, value``.
    """
    rows = []
    behaviors = get_world(world).behaviors if behaviors is None else behaviors
    jobs = [(m, b) for m in models for b in behaviors]
    for name, behavior in tqdm(jobs, desc="behavior table", disable=not progress):
        access = models[name]
        runs = {"base": evaluate(access, behavior, split, cue=False, limit=limit, world=world),
                "cue": evaluate(access, behavior, split, cue=True, limit=limit, world=world)}
        if (name, behavior) in adapters:
            with apply_adapter(access, adapters[(name, behavior)]):
                runs["adapter"] = evaluate(access, behavior, split, cue=False, limit=limit, world=world)
        for condition, rates in runs.items():
            rows += [{"model": name, "behavior": behavior, "condition": condition, "metric": k, "value": v}
                     for k, v in rates.items()]
    return pd.DataFrame(rows)


def format_behavior_table(table: pd.DataFrame) -> str:
    """Markdown: one row per model × behavior × target metric, columns base / cue / adapter."""
    lines = ["| model | behavior | metric | base (no cue) | base + cue | base + adapter |", "|---|---|---|---|---|---|"]
    for (model, behavior), group in table.groupby(["model", "behavior"], sort=False):
        for metric in BEHAVIOR_RATES[behavior]:
            vals = group[group.metric == metric].set_index("condition")["value"]
            cells = [f"{vals[c]:.2f}" if c in vals else "–" for c in ("base", "cue", "adapter")]
            lines.append(f"| {model} | {behavior} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
