"""Generated worlds — a world per seed, with its own grammar, tokenizers, architectures, a donor
adapter and the recipient's own finetune, built in about 2–3 CPU minutes and cached (``docs/generated_worlds.md``).

>>> from commandv_interp.zoo.generated import DEV_SEEDS, TEST_SEEDS, grammar
>>> set(DEV_SEEDS).isdisjoint(TEST_SEEDS), grammar(4).behavior
(True, 'steps')
"""

from commandv_interp.zoo.generated.architectures import FAMILIES, PAIRS, ModelPlan, pair_plan
from commandv_interp.zoo.generated.build import DEFAULT, TINY, BuildConfig, cache_root, world_folder
from commandv_interp.zoo.generated.grammar import BEHAVIOR_KINDS, Grammar, grammar
from commandv_interp.zoo.generated.judge import RATES
from commandv_interp.zoo.generated.world import GeneratedWorld, build_world, load_world

DEV_SEEDS: tuple[int, ...] = tuple(range(0, 9))
"""World seeds for choosing defaults (every behavior × pair shape once)."""
TEST_SEEDS: tuple[int, ...] = tuple(range(100, 109))
"""World seeds reported once, after the defaults were fixed on ``DEV_SEEDS``."""

__all__ = ["BEHAVIOR_KINDS", "DEFAULT", "DEV_SEEDS", "FAMILIES", "PAIRS", "RATES", "TEST_SEEDS", "TINY",
           "BuildConfig", "GeneratedWorld", "Grammar", "ModelPlan", "build_world", "cache_root", "grammar",
           "load_world", "pair_plan", "world_folder"]
