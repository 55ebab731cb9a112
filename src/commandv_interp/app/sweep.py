"""App (sweep): consumes a study file and the embedded zoo, produces the study's tidy results (``results.csv``) with
the cache that makes a re-run resume.

Zoo prompt sets: ``train`` (the behavior's training prompts: unlabeled prompts of the adapter's task) and the sets
of :func:`~commandv_interp.zoo.prompt_sets.profile_prompts` (``profile``, ``profile+train``, ``profile+train+cue``,
``task``); ``profile_sizes`` keeps the first N. Labeled scoring: :func:`~commandv_interp.zoo.evaluate.evaluate_outcomes`
on the behavior's held-out test prompts. ``world`` picks the zoo world (``"heldout"``: the second one); its model
names differ from the main world's, so the cache keys of cells (which name the models) never mix worlds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from commandv_interp.access import ModelAccess
from commandv_interp.adapters import Adapter
from commandv_interp.analysis.study import Study, run_study
from commandv_interp.app.out_paths import check_out, mark_out
from commandv_interp.zoo import catalog
from commandv_interp.zoo.evaluate import evaluate_outcomes
from commandv_interp.zoo.prompt_sets import PROFILE_SETS, profile_prompts
from commandv_interp.zoo.world import prompts as zoo_prompts

__all__ = ["ZooWorld", "run_zoo_study", "ZOO_PROMPT_SETS"]

ZOO_PROMPT_SETS = ("train",) + PROFILE_SETS


@dataclass(frozen=True)
class ZooWorld:
    """One world of the zoo as a :class:`~commandv_interp.analysis.study.StudyWorld`."""

    world: str = "main"  # a name of `zoo.WORLDS`

    def load_model(self, name: str) -> ModelAccess:
        return catalog.load_model(name, world=self.world)

    def load_adapter(self, donor: str, behavior: str) -> Adapter:
        return catalog.load_adapter(donor, behavior, world=self.world)

    def profile_prompts(self, profile_set: str, behavior: str, size: int | None) -> list[str]:
        if profile_set not in ZOO_PROMPT_SETS:
            raise ValueError(f"zoo prompt set {profile_set!r} is not one of {list(ZOO_PROMPT_SETS)!r}")
        task = behavior if profile_set == "task" else None
        prompts = (zoo_prompts(behavior, "train", self.world) if profile_set == "train"
                   else profile_prompts(profile_set, task, world=self.world))
        return prompts[:size] if size else prompts

    def outcomes(self, recipient: ModelAccess, behavior: str, limit: int) -> list[dict[str, float]]:
        return evaluate_outcomes(recipient, behavior, limit=limit, world=self.world)


def run_zoo_study(study_file: str | Path, out: str | Path, progress: bool = True,
                  world: str = "main") -> pd.DataFrame:
    """Read ``study_file`` (TOML, see :class:`~commandv_interp.analysis.study.Study`) and run it on the zoo's
    ``world``."""
    study = Study.from_toml(study_file)
    known = catalog.list_models(world=world)
    unknown = sorted({name for pair in study.pairs for name in pair} - set(known))
    if unknown:
        which = "the zoo" if world == "main" else f"the zoo's {world!r} world"
        raise ValueError(f"{str(study_file)!r} names models {unknown} that are not in {which} ({known})")
    bad_sets = sorted(set(study.profile_sets) - set(ZOO_PROMPT_SETS))
    if bad_sets:
        raise ValueError(f"{str(study_file)!r}: profile_sets {bad_sets} are not zoo prompt sets {list(ZOO_PROMPT_SETS)}")
    check_out(Path(out), [study_file], folder=True, command="sweep")
    mark_out(Path(out), "sweep")  # the study is valid: the folder is the sweep's from here on (a re-run resumes)
    return run_study(study, ZooWorld(world), out, progress)
