"""Consumes a world seed (and a cache folder), produces a loaded :class:`GeneratedWorld`.

>>> import tempfile
>>> w = build_world(0, config=TINY, cache_dir=tempfile.mkdtemp())  # doctest: +SKIP
>>> w.behavior, w.donor_model.n_layers > w.recipient_model.n_layers  # doctest: +SKIP
('refusal', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter, load_adapter
from commandv_interp.paste import apply_adapter
from commandv_interp.zoo.generated.architectures import ModelPlan
from commandv_interp.zoo.generated.build import DEFAULT, BuildConfig, read_record, world_folder, write_world
from commandv_interp.zoo.generated.corpus import items
from commandv_interp.zoo.generated.grammar import GenItem, Grammar, grammar
from commandv_interp.zoo.generated.judge import RATES
from commandv_interp.zoo.generated.rates import item_outcomes, item_rates, max_new_tokens

__all__ = ["GeneratedWorld", "build_world", "load_world", "world_rates"]


@dataclass
class GeneratedWorld:
    """A built world: its grammar, donor and recipient models, the donor's adapter (to transfer) and the recipient's
    own adapter trained the same way (the direct finetune), and the build record (plans, costs, behavior table).

    Attributes:
        seed, grammar, folder, record: what was built and where.
        donor_model, recipient_model: the two base models (``ModelAccess``).
        adapter: the donor's NodiReFT adapter; ``finetune``: the recipient's.
    """

    seed: int
    grammar: Grammar
    folder: Path
    record: dict
    donor_model: ModelAccess
    recipient_model: ModelAccess
    adapter: Adapter
    finetune: Adapter

    @property
    def behavior(self) -> str:
        return self.grammar.behavior

    @property
    def rates(self) -> tuple[str, str]:
        """The behavior's target rate and side rate (e.g. ``("refusal", "false_refusal")``)."""
        return RATES[self.behavior]

    @property
    def plans(self) -> tuple[ModelPlan, ModelPlan]:
        return tuple(ModelPlan.from_dict(self.record[r]["plan"]) for r in ("donor", "recipient"))  # type: ignore

    def items(self, split: str = "test") -> list[GenItem]:
        return items(self.grammar, split)

    def prompts(self, split: str = "train") -> list[str]:
        """Prompt strings of a split (``train``: the adapter's unlabeled task prompts; ``test``: held out)."""
        return [i.prompt for i in self.items(split)]

    def max_new_tokens(self, model: ModelAccess) -> int:
        """Tokens that cover the longest target response on this model's tokenizer (the whole answer) plus EOS."""
        return max_new_tokens(self.grammar, model)

    def outcomes(self, model: ModelAccess, limit: int | None = None, cue: bool = False, start: int = 0
                 ) -> list[dict[str, float]]:
        """Per test prompt, the rates its greedy response (under the model's active edits) contributes to."""
        return item_outcomes(self.grammar, model, self.items("test")[start:][:limit], cue)

    def evaluate(self, model: ModelAccess, limit: int | None = None, cue: bool = False) -> dict[str, float]:
        """The behavior's two rates on held-out test prompts, under the model's active edits."""
        return item_rates(self.grammar, model, self.items("test")[:limit], cue)


def world_rates(donor_model: ModelAccess, recipient_model: ModelAccess, adapter: Adapter, finetune: Adapter,
                world: GeneratedWorld, limit: int | None) -> list[dict]:
    """The behavior table: each model without cue, with cue and with its own adapter (tidy rows)."""
    rows = []
    for role, model, own in (("donor", donor_model, adapter), ("recipient", recipient_model, finetune)):
        runs = {"base": world.evaluate(model, limit), "cue": world.evaluate(model, limit, cue=True)}
        with apply_adapter(model, own):
            runs["adapter"] = world.evaluate(model, limit)
        rows += [{"model": role, "condition": c, "metric": k, "value": v} for c, r in runs.items() for k, v in r.items()]
    return rows


def _load(seed: int, folder: Path, record: dict) -> GeneratedWorld:
    donor, recipient = open_model(folder / "donor", name="donor"), open_model(folder / "recipient", name="recipient")
    return GeneratedWorld(seed, grammar(seed), folder, record, donor, recipient,
                          load_adapter(folder / "donor" / "adapter"), load_adapter(folder / "recipient" / "adapter"))


def load_world(folder: str | Path) -> GeneratedWorld:
    """A world built earlier, from its folder."""
    folder = Path(folder)
    if not (folder / "world.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no built world (no world.json); build it with build_world(seed)")
    record = read_record(folder)
    return _load(int(record["seed"]), folder, record)


def build_world(seed: int, config: BuildConfig = DEFAULT, cache_dir: str | Path | None = None,
                progress: bool = False) -> GeneratedWorld:
    """World ``seed``, built (about 2–3 CPU minutes at the default config on one thread) or loaded from the cache.

    Args:
        seed: the world's seed (any int ≥ 0; ``DEV_SEEDS`` and ``TEST_SEEDS`` are the benchmark's).
        config: the build schedule (``TINY`` for tests: a few steps, the models learn nothing).
        cache_dir: the cache folder (default ``$COMMANDV_WORLDS_DIR`` or ``~/.cache/commandv_interp/worlds``).
        progress: show pretraining progress bars.

    Returns:
        The loaded world; ``world.record["behavior_table"]`` has the unedited, cued and adapted rates.
    """
    grammar(seed)  # validates the seed
    folder = world_folder(seed, config, cache_dir)
    if not (folder / "world.json").is_file():
        def finish(tmp: Path, record: dict) -> None:
            w = _load(seed, tmp, record)
            record["behavior_table"] = world_rates(w.donor_model, w.recipient_model, w.adapter, w.finetune, w,
                                                   config.eval_limit)
        write_world(seed, config, cache_dir, progress, finish)
    return load_world(folder)

