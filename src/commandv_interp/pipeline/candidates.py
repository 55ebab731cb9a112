"""Consumes a recipient and the edits a label-free transfer considers, produces :class:`Candidate`
values (what a candidate pastes or applies, and what making it cost) and the one rule that ranks scored candidates.

A candidate is either a *paste* (a donor adapter, or a subset of its layers, carried through converters) or a
*native* recipient adapter (a polished paste, or a fresh adapter distilled from scratch). Either way it gives the
recipient one delta function per edited layer (:meth:`Candidate.deltas`), which is all the scoring needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter
from commandv_interp.adapters.edits import DeltaFn, placed
from commandv_interp.converters import Converters
from commandv_interp.converters.transport import pasted_deltas

__all__ = ["Candidate", "Cost", "native_deltas", "rank", "ranking_key", "RANKING"]

RANKING = ("criterion", "lift", "agree_unchanged")
"""Scored candidates rank by the donor-agreement criterion, then by the lift over the plain recipient, then by the
agreement on the prompts the donor's adapter leaves unchanged (all held-out measures; a missing or NaN value counts
as 0); ties go to the candidate scored first (the search lists the cheaper and simpler edits first). The search
(:func:`rank`) and the polish race (:func:`~commandv_interp.pipeline.polish_race.race`) both rank by it."""


@dataclass(frozen=True)
class Cost:
    """What making a candidate cost beyond the shared preparation: FLOPs and wall seconds of its fit (or of its
    polish round)."""

    flops: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """One edit a transfer considers.

    Attributes:
        name: its name in the candidates table (``<method>/<match>``, ``…/layers=<l>+<l>``, ``…+polish/<steps>``,
            ``…*scale=<s>``).
        stage: 1 (fits and layer subsets), 2 (the finalist), 3 (a polish round) or 4 (the chosen round at another
            scale).
        method, match: how its converters were fitted and its layers matched (``scratch``/``depth`` for the fresh
            adapter).
        edit: the donor adapter (or the subset of its layers) it pastes, or the native recipient adapter it applies.
        converters: the donor → recipient converters of a paste; None for a native recipient adapter.
        cost: what its own fit (or polish round) cost.
        polish_steps: distillation steps behind a native adapter (0 for a paste).
        polish_lr: the learning rate of those steps (None for a paste and a start).
        polish_budget_flops: the FLOPs budget of the polish that made a native adapter (None for a paste).
        paper_exact: the paper's configuration (pinv converters by relative depth), listed for reference only.
    """

    name: str
    stage: int
    method: str
    match: str
    edit: Adapter = field(repr=False)
    converters: Converters | None = field(default=None, repr=False)
    cost: Cost = Cost()
    polish_steps: int = 0
    paper_exact: bool = False
    polish_lr: float | None = None
    polish_budget_flops: float | None = None

    @property
    def is_paste(self) -> bool:
        return self.converters is not None

    def deltas(self, recipient_model: ModelAccess) -> dict[int, list[DeltaFn]]:
        """Recipient layer → the delta functions this candidate adds there (at scale 1)."""
        if self.converters is not None:
            return pasted_deltas(recipient_model, self.edit, self.converters)
        return native_deltas(recipient_model, self.edit)

    def restricted(self, layers: Sequence[int]) -> Candidate:
        """The same candidate at ``layers`` of its edit only (donor layers of a paste, recipient layers of a native
        adapter), named ``<name>/layers=<l>+<l>``."""
        layers = tuple(layers)
        converters = self.converters.restricted(self.edit, layers) if self.converters is not None else None
        return Candidate(f"{self.name}/layers={'+'.join(map(str, layers))}", self.stage, self.method, self.match,
                         self.edit.restricted(layers), converters, Cost(), self.polish_steps)

    def at_stage(self, stage: int) -> Candidate:
        """The same edit listed under another stage (the finalist is a stage-1 candidate scored on all prompts)."""
        return Candidate(self.name, stage, self.method, self.match, self.edit, self.converters, Cost(),
                         self.polish_steps, self.paper_exact)

    def columns(self) -> dict:
        """Its columns in the candidates table."""
        return {"candidate": self.name, "stage": self.stage, "method": self.method, "match": self.match,
                "layers": "+".join(map(str, self.edit.layers)), "polish_steps": self.polish_steps,
                "polish_lr": self.polish_lr, "polish_budget_flops": self.polish_budget_flops,
                "paper_exact": self.paper_exact, "fit_flops": self.cost.flops, "fit_s": self.cost.seconds}


def native_deltas(recipient_model: ModelAccess, adapter: Adapter) -> dict[int, list[DeltaFn]]:
    """Recipient layer → the delta function of a native recipient adapter (placed on that layer's device)."""
    return {layer: [placed(iv, recipient_model.block_device(layer)).delta]
            for layer, iv in adapter.interventions.items()}


def ranking_key(row: Mapping) -> tuple[float, ...]:
    """A scored row's values in :data:`RANKING` order, larger is better (missing or NaN: 0).

    >>> ranking_key({"criterion": 0.75, "lift": float("nan")})
    (0.75, 0.0, 0.0)
    """
    values = (row.get(key, 0.0) for key in RANKING)
    return tuple(0.0 if v is None or v != v else float(v) for v in values)


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows best first by :func:`ranking_key` (descending; ties keep their order). The one ranking rule
    of the label-free search.

    >>> table = pd.DataFrame({"candidate": list("abcde"), "criterion": [0.5, 0.9, 0.9, 0.9, 0.9],
    ...                       "lift": [0.6, 0.6, 0.7, 0.6, 0.6], "agree_unchanged": [1.0, 0.5, 0.5, 0.5, 0.8]})
    >>> rank(table).candidate.tolist()
    ['c', 'e', 'b', 'd', 'a']
    """
    keys = [ranking_key(row) for row in table.to_dict("records")]
    return table.iloc[sorted(range(len(keys)), key=keys.__getitem__, reverse=True)]
