"""The embedded model zoo — a synthetic instruction world with measurable behaviors, small causal
LMs of three architectures pretrained on it, and their donor adapters, all shipped inside the package; and a second,
held-out world (``world="heldout"``: other words, templates, cues, responses and architectures) nobody tuned on.

>>> from commandv_interp import zoo
>>> zoo.prompts("refusal", "test")[0].endswith("assistant :")
True
>>> sorted(zoo.WORLDS), zoo.WORLD_BEHAVIORS["heldout"]
(['heldout', 'main'], ('refusal', 'jailbreak'))
>>> zoo.score("cot", ["user : what is 4 + 2 - 5 + 3 assistant :"], ["step 4 + 2 = 6 , step 6 - 5 = 1 , "
...           "step 1 + 3 = 4 . answer 4 ."])["accuracy"]
1.0
"""

from commandv_interp.zoo.catalog import (
    adapter_dir,
    list_models,
    load_adapter,
    load_model,
    manifest,
    model_dir,
)
from commandv_interp.zoo.evaluate import behavior_table, evaluate, respond
from commandv_interp.zoo.scoring import score
from commandv_interp.zoo.world import BEHAVIORS, CUES, WORLDS, World, get_world, items, prompts, with_cue

WORLD_BEHAVIORS: dict[str, tuple[str, ...]] = {name: w.behaviors for name, w in WORLDS.items()}
"""The behaviors each world has (``BEHAVIORS`` is the main world's)."""

__all__ = [
    "BEHAVIORS", "CUES", "WORLDS", "WORLD_BEHAVIORS", "World", "adapter_dir", "behavior_table", "evaluate",
    "get_world", "items", "list_models", "load_adapter", "load_model", "manifest", "model_dir", "prompts", "respond",
    "score", "with_cue",
]
