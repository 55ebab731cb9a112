"""Stage 6 (zoo): the embedded model zoo — a synthetic instruction world with measurable behaviors, small causal
LMs of three architectures pretrained on it, and their donor adapters, all shipped inside the package.

>>> from commandv_interp import zoo
>>> zoo.prompts("refusal", "test")[0].endswith("assistant :")
True
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
from commandv_interp.zoo.world import BEHAVIORS, CUES, items, prompts, with_cue

__all__ = [
    "BEHAVIORS", "CUES", "adapter_dir", "behavior_table", "evaluate", "items", "list_models", "load_adapter",
    "load_model", "manifest", "model_dir", "prompts", "respond", "score", "with_cue",
]
