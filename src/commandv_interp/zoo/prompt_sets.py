"""Zoo fixtures: consumes the zoo's world, produces the prompt sets a zoo transfer is profiled and fitted on.

Prompts only: no response is used.
"""

from __future__ import annotations

from commandv_interp.zoo.world import Behavior, WorldLike, get_world, with_cue
from commandv_interp.zoo.world import prompts as world_prompts

__all__ = ["PROFILE_SETS", "TASK_SIZE", "profile_prompts"]

PROFILE_SETS = ("profile", "profile+train", "profile+train+cue", "task")
TASK_SIZE = 32  # prompts per form in the behavior-specific ``task`` set


def profile_prompts(profile_set: str = "profile", behavior: Behavior | None = None,
                    task_size: int = TASK_SIZE, world: WorldLike = None) -> list[str]:
    """The prompts to profile: ``profile`` (generic questions of the world, the paper's LIMA analogue),
    ``profile+train`` (those plus the behaviors' training prompts, without cues), ``profile+train+cue`` (those
    plus every training prompt once more under its behavior's cue and once under a neutral system line, so the
    converters see the directions a cue moves the residual stream along, and that a system line alone does not)
    or ``task`` (small and behavior-specific: ``task_size`` training prompts of ``behavior`` plain, under its cue
    and under a neutral system line, plus ``task_size`` generic ones) of a world (default: the main one; its
    behaviors and neutral system lines). Prompts only: no response is used."""
    w = get_world(world)
    behaviors, neutral = w.behaviors, w.neutral_cues
    if profile_set not in PROFILE_SETS:
        raise ValueError(f"profile_set must be one of {PROFILE_SETS}, got {profile_set!r}")
    if profile_set == "task":
        if behavior not in behaviors:
            raise ValueError(f"the 'task' profile set is per behavior: pass behavior= one of {behaviors}, "
                             f"got {behavior!r}")
        if task_size < 1:
            raise ValueError(f"task_size must be >= 1, got {task_size!r}")
        train = world_prompts(behavior, "train", w)[:task_size]
        return list(dict.fromkeys(train + [with_cue(p, behavior, w) for p in train]
                                  + [f"system : {neutral[i % len(neutral)]} {p}" for i, p in enumerate(train)]
                                  + world_prompts(behavior, "profile", w)[:task_size]))
    out = world_prompts("refusal", "profile", w)
    if profile_set != "profile":
        out += [p for b in behaviors for p in world_prompts(b, "train", w)]  # type: ignore[arg-type]
    if profile_set == "profile+train+cue":
        for b in behaviors:
            train = world_prompts(b, "train", w)  # type: ignore[arg-type]
            out += [with_cue(p, b, w) for p in train]  # type: ignore[arg-type]
            out += [f"system : {neutral[i % len(neutral)]} {p}" for i, p in enumerate(train)]
    return list(dict.fromkeys(out))


