"""Consumes the settings of one label-free transfer, produces :class:`TransferConfig`: the frozen,
validated record of how :func:`~commandv_interp.pipeline.label_free.transfer` ran, which a transfer folder stores
and ``commandv transfer --replay`` runs again.

>>> config = TransferConfig(seed=3)
>>> TransferConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from commandv_interp.pipeline.agreement import ANSWER_CAP
from commandv_interp.pipeline.polish import LR_GRID, PATIENCE, POLISH_BATCH, POLISH_BUDGET, POLISH_ROUND, POLISH_STEPS
from commandv_interp.pipeline.search import PROFILE_PROMPTS

__all__ = ["TransferConfig", "Start", "STARTS"]

Start = Literal["paste", "scratch"]
LATER = {"scale_search": False, "lr_fallback": False}
"""Settings added after transfers were first saved, with the value a config saved before them ran with."""
STARTS: tuple[str, ...] = get_args(Start)


@dataclass(frozen=True)
class TransferConfig:
    """Every setting of :func:`~commandv_interp.pipeline.label_free.transfer`.

    Attributes:
        scoring_fraction: share of the prompts held out from fitting and used to score the candidates.
        max_new_tokens: at most this many response tokens in the donor's answers (what the criterion compares and
            the polish learns); an answer ends at EOS or a newline before, so multi-token behaviors are judged over
            the whole answer.
        batch_size: prompts per forward pass.
        seed: the fit/scoring split, the fresh adapter's initialization and the polish's batches.
        polish_steps: at most this many distillation steps on the chosen paste (0: the paste as it is, the
            backprop-free Command-V path); the budget and the patience stop it earlier.
        start: ``"paste"`` (search the candidates, polish the best) or ``"scratch"`` (polish a fresh adapter at the
            depth-matched layers: the distillation baseline).
        polish_budget: the polish's FLOPs at most, as a share of the estimated finetune's
            (:func:`~commandv_interp.pipeline.polish.finetune_flops_estimate`).
        polish_lrs: the learning rates every polish start tries in its first round.
        polish_round: steps per polish round (each round is scored on the scoring prompts).
        polish_patience: rounds without a better criterion before the polish stops.
        polish_batch: (prompt, answer) pairs per polish step.
        profile_prompts: at most this many fitting prompts are profiled (with their onsets).
        scale_search: score the chosen polished adapter at a few scales around 1 and keep the middle of the range
            the criterion cannot tell from the best (:mod:`~commandv_interp.pipeline.scale`).
        lr_fallback: try the rates of ``polish_lrs`` in order and go to the next only when no trial so far raised
            the criterion above where its start began (the paste's own criterion, the unedited recipient's for the
            fresh adapter); False: every rate is tried (how transfers saved before this setting ran).
    """

    scoring_fraction: float = 0.25
    max_new_tokens: int = ANSWER_CAP
    batch_size: int = 32
    seed: int = 0
    polish_steps: int = POLISH_STEPS
    start: str = "paste"  # a Start, checked in __post_init__ (a clear ValueError, not a type-check error)
    polish_budget: float = POLISH_BUDGET
    polish_lrs: tuple[float, ...] = LR_GRID
    polish_round: int = POLISH_ROUND
    polish_patience: int = PATIENCE
    polish_batch: int = POLISH_BATCH
    profile_prompts: int = PROFILE_PROMPTS
    scale_search: bool = True
    lr_fallback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.scoring_fraction, bool) or not isinstance(self.scoring_fraction, float | int) \
                or not 0 < self.scoring_fraction < 1:
            raise ValueError(f"scoring_fraction must be a number in (0, 1), got {self.scoring_fraction!r}")
        for name, least in (("max_new_tokens", 1), ("batch_size", 1), ("seed", 0), ("polish_steps", 0),
                            ("polish_round", 1), ("polish_patience", 1), ("polish_batch", 1), ("profile_prompts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if isinstance(self.polish_budget, bool) or not isinstance(self.polish_budget, float | int) \
                or not 0 < self.polish_budget <= 1:
            raise ValueError(f"polish_budget is a share of the estimated finetune's FLOPs in (0, 1], got "
                             f"{self.polish_budget!r}")
        if not isinstance(self.polish_lrs, tuple) or not self.polish_lrs or any(
                isinstance(lr, bool) or not isinstance(lr, float | int) or not 0 < lr < 1 for lr in self.polish_lrs):
            raise ValueError(f"polish_lrs must be a non-empty tuple of learning rates in (0, 1), got "
                             f"{self.polish_lrs!r}")
        if self.start not in STARTS:
            raise ValueError(f"start={self.start!r} is not one of {list(STARTS)}")
        for name in ("scale_search", "lr_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.start == "scratch" and self.polish_steps == 0:
            raise ValueError("start='scratch' learns everything in the polish: pass polish_steps >= 1 (got 0)")

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (what ``transfer.json`` stores under ``config``)."""
        return dataclasses.asdict(self) | {"polish_lrs": list(self.polish_lrs)}

    @classmethod
    def from_dict(cls, data: Mapping) -> TransferConfig:
        """The config :meth:`to_dict` wrote; refuses unknown and missing keys (a config read back is complete)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a transfer config is a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(LATER) | dict(data)  # settings added later: a config saved before them ran without them
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"transfer config has unknown keys {unknown} and lacks keys {missing}; re-create it "
                             "with commandv transfer")
        values = dict(data)
        if isinstance(values["polish_lrs"], list):
            values["polish_lrs"] = tuple(values["polish_lrs"])
        return cls(**values)
