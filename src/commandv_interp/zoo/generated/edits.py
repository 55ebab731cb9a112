"""Consumes a built :class:`~commandv_interp.zoo.generated.world.GeneratedWorld`, produces its donor's other edits:
a PEFT LoRA and a steering vector, by the zoo's recipes (:mod:`~commandv_interp.zoo.train_edits`), beside the
world's NodiReFT adapter.

- **LoRA**: peft, rank 8, ``lora_alpha`` 16, every attention and MLP projection, 300 AdamW steps of 32 of the
  world's training examples (``LORA_RECIPE``).
- **steering vector**: the difference of means at the middle block and the last prompt token between the first
  128 training prompts with the world's cue line (``Grammar.with_cue``) and without it; the scale, among ``SCALES``,
  the one with the highest target rate on those training prompts whose false refusal (refusal worlds) stays within
  +0.02 of the unedited donor's (:func:`~commandv_interp.zoo.train_edits.pick_scale`). Test prompts are never used.

Each is built on first request by :func:`world_edit` and cached inside the world folder, ``<world>/edits/lora/`` (a
PEFT folder) and ``<world>/edits/steering/steering.safetensors``, each beside a ``record.json``: the world it was
built for (seed, version, build config, donor plan, the donor weights' SHA-256), the recipe, the training record
(for the vector: its layer, the chosen scale and the per-scale train rates) and the donor's test rates unedited,
under the ReFT adapter (the world's behavior table) and under the edit. A kind's folder is written to a temporary
sibling and renamed into place, so a reader sees a whole edit or none; an edit built for another world, or by
another recipe, is refused on loading.

>>> from commandv_interp.zoo.generated import TINY, build_world
>>> import tempfile
>>> w = build_world(1, config=TINY, cache_dir=tempfile.mkdtemp())  # doctest: +SKIP
>>> world_edit(w, "lora", TINY_RECIPE).kind  # doctest: +SKIP
'lora'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from commandv_interp.adapters.edit import Edit, apply_edit, load_edit
from commandv_interp.io import dir_mode, read_json, write_json
from commandv_interp.zoo.generated.build import VERSION
from commandv_interp.zoo.generated.corpus import examples, items
from commandv_interp.zoo.generated.rates import item_rates
from commandv_interp.zoo.generated.world import GeneratedWorld
from commandv_interp.zoo.train_edits import LORA_RECIPE, STEER_PROMPTS, train_lora, train_steering

__all__ = ["GeneratedEditKind", "GENERATED_EDIT_KINDS", "EditRecipe", "RECIPE", "TINY_RECIPE", "edit_folder",
           "world_edit", "edit_record"]

GeneratedEditKind = Literal["reft", "lora", "steering"]
GENERATED_EDIT_KINDS: tuple[str, ...] = get_args(GeneratedEditKind)
STEERING_FILE = "steering.safetensors"
RECORD_FILE = "record.json"


@dataclass(frozen=True)
class EditRecipe:
    """How a world's LoRA and steering vector are made (the zoo's recipe by default)."""

    lora_steps: int = LORA_RECIPE["steps"]
    lora_batch: int = LORA_RECIPE["batch_size"]
    steer_prompts: int = STEER_PROMPTS  # training prompts the means and the scale choice use

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EditRecipe:
        return cls(**d)

    def lora(self) -> dict:
        """The LoRA recipe :func:`~commandv_interp.zoo.train_edits.train_lora` takes."""
        return LORA_RECIPE | {"steps": self.lora_steps, "batch_size": self.lora_batch}


RECIPE = EditRecipe()
TINY_RECIPE = EditRecipe(lora_steps=3, lora_batch=4, steer_prompts=6)
"""A few steps and prompts (tests): exercises every path in seconds on a ``TINY`` world."""


def _check_kind(kind: str) -> None:
    if kind not in GENERATED_EDIT_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(GENERATED_EDIT_KINDS)}")


def edit_folder(world: GeneratedWorld, kind: str) -> Path:
    """Where ``world`` keeps its ``kind`` edit (``reft``: the donor's adapter folder)."""
    _check_kind(kind)
    if kind == "reft":
        return world.folder / "donor" / "adapter"
    return world.folder / "edits" / kind


def _identity(world: GeneratedWorld) -> dict:
    """What ties an edit to one built world: seed, version, build config, donor plan and weights."""
    digest = hashlib.sha256()
    for weights in sorted((world.folder / "donor").glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return {"world_seed": world.seed, "world_version": int(world.record.get("version", VERSION)),
            "world_config": world.record["config"], "donor": world.plans[0].name,
            "donor_weights_sha256": digest.hexdigest()}


def _test_rates(world: GeneratedWorld, edit: Edit | None) -> dict[str, float]:
    with apply_edit(world.donor_model, edit):
        return world.evaluate(world.donor_model, world.record["config"]["eval_limit"])


def _donor_table(world: GeneratedWorld, condition: str) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in world.record["behavior_table"]
            if (r["model"], r["condition"]) == ("donor", condition)}


def _train(world: GeneratedWorld, kind: str, folder: Path, recipe: EditRecipe, progress: bool) -> tuple[dict, Path]:
    """Train ``kind`` into ``folder``; returns its training record and the path ``load_edit`` reads."""
    g, donor = world.grammar, world.donor_model
    if kind == "lora":
        record = train_lora(donor, examples(g, "train"), folder, progress, f"LoRA on world {world.seed}'s donor",
                            recipe.lora())
        return record, folder
    train_items = items(g, "train")[:recipe.steer_prompts]
    prompts = [i.prompt for i in train_items]
    target, side = world.rates
    record = train_steering(donor, prompts, [g.with_cue(p) for p in prompts], folder / STEERING_FILE,
                            lambda model: item_rates(g, model, train_items), target,
                            side if side == "false_refusal" else None)
    return record, folder / STEERING_FILE


def _build(world: GeneratedWorld, kind: str, target: Path, recipe: EditRecipe, progress: bool) -> None:
    """Train, score and record ``kind`` in a temporary sibling of ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}.", dir=target.parent))
    try:
        tmp.chmod(dir_mode())  # mkdtemp's 0o700: give the folder the umask's permissions as every artifact
        t0 = time.perf_counter()
        training, path = _train(world, kind, tmp, recipe, progress)
        rates = {"base": _donor_table(world, "base"), "reft": _donor_table(world, "adapter"),
                 kind: _test_rates(world, load_edit(path))}
        write_json(tmp / RECORD_FILE, _identity(world) | {
            "kind": kind, "recipe": recipe.to_dict(), "training": training, "test_rates": rates,
            "test_prompts": world.record["config"]["eval_limit"] or len(world.items("test")),
            "build_s": round(time.perf_counter() - t0, 1)})
        if not target.exists():  # else another process finished first: keep its copy
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def edit_record(world: GeneratedWorld, kind: str, recipe: EditRecipe = RECIPE,
                progress: bool = False) -> dict:
    """The record of ``world``'s ``kind`` edit (built first if missing; see the module doc). ``reft``: the world's
    adapter, with the donor's test rates from the behavior table.

    Raises:
        ValueError: the cached edit was built for another world or by another recipe (naming both and the fix).
    """
    _check_kind(kind)
    if kind == "reft":
        return _identity(world) | {"kind": "reft", "training": world.record["donor"]["adapter"],
                                   "test_rates": {"base": _donor_table(world, "base"),
                                                  "reft": _donor_table(world, "adapter")}}
    folder = edit_folder(world, kind)
    if not (folder / RECORD_FILE).is_file():
        _build(world, kind, folder, recipe, progress)
    record = read_json(folder / RECORD_FILE)
    ours = _identity(world) | {"recipe": recipe.to_dict()}
    for key, value in ours.items():
        if record.get(key) != value:
            raise ValueError(f"{str(folder)!r} holds a {kind} edit built with {key}={record.get(key)!r}, but this world "
                             f"(seed {world.seed}) has {key}={value!r}; delete {str(folder)!r} and call "
                             f"world_edit(world, {kind!r}) to rebuild it for this world")
    return record


def world_edit(world: GeneratedWorld, kind: str, recipe: EditRecipe = RECIPE,
               progress: bool = False) -> Edit:
    """``world``'s donor edit of ``kind``: ``reft`` (the world's NodiReFT adapter), ``lora`` or ``steering``, built
    by ``recipe`` and cached on first request (minutes at ``RECIPE``), loaded afterwards.

    Raises:
        ValueError: an unknown kind, or a cached edit of another world or recipe (see :func:`edit_record`).
    """
    edit_record(world, kind, recipe, progress)
    if kind == "reft":
        return world.adapter
    folder = edit_folder(world, kind)
    return load_edit(folder if kind == "lora" else folder / STEERING_FILE)
