"""Consumes a zoo model name and a behavior, produces the zoo's other donor edits of that behavior: a PEFT LoRA
(``zoo/data/edits/<model>/<behavior>/lora``) and a steering vector
(``zoo/data/edits/<model>/<behavior>/steering.safetensors``), beside the NodiReFT adapters of ``zoo.load_adapter``.

They are trained by ``python -m commandv_interp.zoo.train_edits`` (recipe and measured rates in ``docs/edits.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from commandv_interp.adapters.edit import Edit, load_edit
from commandv_interp.zoo.catalog import DATA, load_adapter, world_dir
from commandv_interp.zoo.world import WorldLike, get_world

__all__ = ["ZooEditKind", "ZOO_EDIT_KINDS", "TARGET_METRIC", "SIDE_METRIC", "edit_path", "load_zoo_edit"]

ZooEditKind = Literal["reft", "lora", "steering"]
ZOO_EDIT_KINDS: tuple[str, ...] = get_args(ZooEditKind)
TARGET_METRIC = {"refusal": "refusal", "jailbreak": "compliance", "cot": "accuracy"}
"""The rate a behavior's edit is for (``zoo.evaluate``'s key)."""
SIDE_METRIC = {"refusal": "false_refusal", "jailbreak": "false_refusal"}
"""The side effect that must not grow (benign prompts refused); CoT has none."""


def edit_path(model_name: str, behavior: str, kind: ZooEditKind, root: str | Path | None = None,
              world: WorldLike = None) -> Path:
    """Where the zoo keeps ``kind``'s edit of ``behavior`` on ``model_name``: ``edits/<model>/...`` for the main
    world, ``edits/<world's folder>/<model>/...`` for another (``edits/heldout/neox-4x80/refusal/lora``)."""
    if kind == "reft":
        return (Path(root) if root is not None else world_dir(world)) / model_name / "adapters" / behavior
    base = Path(root) if root is not None else DATA
    folder = base / "edits" / get_world(world).data / model_name / behavior
    return folder / "lora" if kind == "lora" else folder / "steering.safetensors"


def load_zoo_edit(model_name: str, behavior: str, kind: ZooEditKind = "reft", root: str | Path | None = None,
                  world: WorldLike = None) -> Edit:
    """The zoo's ``kind`` edit (``reft``: its NodiReFT adapter, ``lora``, ``steering``) of ``behavior`` on
    ``model_name`` in ``world`` (default: the main one).

    >>> load_zoo_edit("llama-6x128", "refusal", "steering").kind
    'steering'
    """
    if kind not in ZOO_EDIT_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(ZOO_EDIT_KINDS)}")
    if kind == "reft":
        return load_adapter(model_name, behavior, root, world)
    path = edit_path(model_name, behavior, kind, root, world)
    if not path.exists():
        raise FileNotFoundError(f"the zoo has no {kind} edit of {behavior!r} on {model_name!r} ({str(path)!r}); "
                                f"train it with python -m commandv_interp.zoo.train_edits --world {get_world(world).name}")
    return load_edit(path, base_model=model_name if kind == "lora" else None)
