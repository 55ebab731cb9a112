"""Consumes the polish's starts (a compiled paste, a fresh adapter), a way to train each
(:class:`~commandv_interp.pipeline.polish.Distillation`) and a way to score an adapter on the held-out scoring
prompts, produces the polished rounds: a race that finds its own learning rate, runs while the held-out criterion
improves, and stops at a FLOPs budget.

1. **Learning rate.** Every start trains one round at the first learning rate of ``PolishPlan.lrs`` (the highest,
   by default), and each trial is scored. All starts see the same rates, so the race between them is fair. The next
   (lower) rate is tried only when no trial so far raised the criterion above where its start began (its *origin*:
   the paste's own row, or the unedited recipient's for a fresh adapter; a higher lift alone does not count): a rate
   too high to improve on its start is lowered. The sweep also stops after a rate at which a trial reproduces every
   scoring answer (criterion 1). Without origins, every rate is tried.
2. **The race.** The trial with the best held-out score goes on, by the search's one ranking rule
   (:data:`~commandv_interp.pipeline.candidates.RANKING`: the criterion, then the lift, then the agreement on the
   unchanged prompts; no start is preferred by its position in the list).
3. **Patience.** The winner trains round after round while a round raises the criterion (or, at an equal criterion,
   the lift by ``LIFT_STEP``); it stops after ``PolishPlan.patience`` rounds without that, at criterion 1, at
   ``PolishPlan.max_steps`` steps, or when the budget cannot pay for another step and its scoring.
4. **A second chance.** A winner that never scored above ``PolishPlan.floor`` (the unedited recipient's criterion:
   it learned nothing the criterion can see, e.g. it flipped from answering every request to refusing every one)
   leaves what is left of the budget to the best trial of another start, which goes on by the same patience. On a
   world where every first-round trial did one or the other, the paste's winner stalled there while the fresh start,
   given the budget alone, learned to refuse only the harmful requests.

The budget covers everything the polish runs: every trial's and round's training steps (``4 · params · tokens``)
and the scoring of each (``score_cost`` per scored adapter). A round's training is cut at the step that would pass
the budget, and a round is only started when its scoring is paid for, so the polish never spends more than the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from commandv_interp.adapters import Adapter
from commandv_interp.pipeline.candidates import ranking_key
from commandv_interp.pipeline.polish import LR_GRID, PATIENCE, POLISH_ROUND, POLISH_STEPS, Distillation

__all__ = ["PolishPlan", "PolishOutcome", "race", "LIFT_STEP"]

LIFT_STEP = 0.01  # at an equal criterion, a round must raise the lift by this much to count as an improvement

Trainer = Callable[[Adapter, float], Distillation]  # (start adapter, learning rate) -> a fresh trainer
Scorer = Callable[[str, str, Adapter, dict], dict]  # (start, candidate name, adapter, info) -> its scored row


@dataclass(frozen=True)
class PolishPlan:
    """How long and how the polish may train.

    Attributes:
        budget: FLOPs the whole polish may spend (training and scoring).
        score_cost: FLOPs of scoring one adapter on the scoring prompts.
        max_steps: at most this many steps for the continued start.
        lrs: the learning rates every start tries in its first round.
        round_steps: steps per scored round.
        patience: rounds without improvement before stopping.
        floor: the criterion to beat (the unedited recipient's); a winner that never does hands the rest of the
            budget to the best trial of another start.
    """

    budget: float
    score_cost: float
    max_steps: int = POLISH_STEPS
    lrs: tuple[float, ...] = LR_GRID
    round_steps: int = POLISH_ROUND
    patience: int = PATIENCE
    floor: float = float("-inf")

    def __post_init__(self) -> None:
        if self.floor != self.floor:
            raise ValueError("floor must be a criterion value (or -inf for none), got NaN")
        if not self.budget >= 0 or not self.score_cost >= 0:
            raise ValueError(f"budget and score_cost must be >= 0 FLOPs, got {self.budget!r} and {self.score_cost!r}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must be positive learning rates, got {self.lrs!r}")
        for name in ("max_steps", "round_steps", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass
class PolishOutcome:
    """What the race ran: every scored round's adapter by candidate name, its row, and the FLOPs spent."""

    rounds: dict[str, Adapter] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)
    train_flops: float = 0.0
    score_flops: float = 0.0
    winner: str | None = None  # the first-round trial that went on
    second: str | None = None  # the trial of another start that went on after the winner stalled at the floor

    @property
    def flops(self) -> float:
        return self.train_flops + self.score_flops


def race(starts: Mapping[str, Adapter], trainer: Trainer, score: Scorer, plan: PolishPlan,
         origins: Mapping[str, Mapping] | None = None) -> PolishOutcome:
    """Sweep the learning rates on every start, continue the best trial while the criterion improves, within the
    budget (see the module doc). ``origins`` holds each start's scored row before training (its criterion and lift):
    with them, a lower rate is tried only when no trial raised the criterion above its origin's. Returns every scored
    round."""
    if origins is not None and set(origins) != set(starts):
        raise ValueError(f"origins must hold one row per start: starts {sorted(starts)}, origins {sorted(origins)}")
    out = PolishOutcome()
    trials: list[tuple[str, Distillation, dict]] = []
    for lr in plan.lrs:
        trainers = {name: trainer(adapter, lr) for name, adapter in starts.items()}
        need = sum(t.expected_step_flops() * plan.round_steps + plan.score_cost for t in trainers.values())
        if out.flops + need > plan.budget:  # a rate every start can try in full, or none
            break
        for name, t in trainers.items():
            row = _round(name, t, score, plan, out)
            if row is not None:
                trials.append((name, t, row))
        if trials and max(ranking_key(r)[0] for _, _, r in trials) >= 1.0:
            break
        if origins is not None and any(_raises_criterion(row, origins[name]) for name, _, row in trials):
            break  # this rate (or a higher one) already raised a start's criterion: no lower rate is needed
    if not trials:
        return out
    name, t, best = max(trials, key=lambda trial: ranking_key(trial[2]))
    out.winner = best["candidate"]
    best = _continue(name, t, best, score, plan, out)
    others = [trial for trial in trials if trial[0] != name]
    if ranking_key(best)[0] <= plan.floor + 1e-12 and others:  # the winner learned nothing: another start's turn
        other, t, row = max(others, key=lambda trial: ranking_key(trial[2]))
        out.second = row["candidate"]
        _continue(other, t, row, score, plan, out)
    return out


def _continue(name: str, t: Distillation, best: dict, score: Scorer, plan: PolishPlan, out: PolishOutcome) -> dict:
    """Train ``t`` round after round while it improves on ``best`` (patience, steps, budget); its best row."""
    wait = 0
    while wait < plan.patience and t.steps < plan.max_steps and ranking_key(best)[0] < 1.0:
        row = _round(name, t, score, plan, out)
        if row is None:
            break
        if _improves(row, best):
            best, wait = row, 0
        else:
            wait += 1
    return best


def _raises_criterion(row: Mapping, origin: Mapping) -> bool:
    """Whether a trial's criterion is above its start's origin (a lift alone does not count: it moves before any
    answer changes, and a rate too high for its start can raise it while the criterion falls)."""
    return ranking_key(row)[0] > ranking_key(origin)[0] + 1e-12


def _improves(row: Mapping, best: Mapping) -> bool:
    (c, lift, _), (c0, lift0, _) = ranking_key(row), ranking_key(best)
    return c > c0 + 1e-12 or (c >= c0 - 1e-12 and lift > lift0 + LIFT_STEP)


def _round(name: str, t: Distillation, score: Scorer, plan: PolishPlan, out: PolishOutcome) -> dict | None:
    """One round of ``t`` within what is left of the budget, scored; None when not one step fits."""
    left = plan.budget - out.flops - plan.score_cost
    if left <= 0:
        return None
    t0, flops0, steps0 = time.perf_counter(), t.flops, t.steps
    t.run(min(plan.round_steps, plan.max_steps - t.steps), flops_limit=flops0 + left)
    if t.steps == steps0:
        return None
    out.train_flops += t.flops - flops0
    candidate = f"{name}+polish/{t.steps}/lr={t.lr:g}"
    out.rounds[candidate] = t.adapter()
    row = score(name, candidate, out.rounds[candidate],
                {"polish_steps": t.steps, "polish_lr": t.lr, "fit_flops": t.flops - flops0,
                 "fit_s": time.perf_counter() - t0})
    out.score_flops += float(row.get("score_flops", plan.score_cost))
    out.rows[candidate] = row
    return row
