"""Consumes a donor edit of any supported kind (a pyreft folder, a PEFT LoRA folder, a steering vector file or object),
produces an :data:`Edit` and the context manager that applies it to its model.

Every kind answers ``layers`` and ``restricted(layers)`` and is applied with one call,
``with apply_edit(donor_model, edit): ...``, with :func:`~commandv_interp.paste.apply_adapter`'s semantics: every
forward and generate inside the block carries the edit, and on exit the model is bit-identical to before.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters.edits import adapter_edits
from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.lora import CONFIG_FILE, LoraEdit, load_peft_lora, lora_applied
from commandv_interp.adapters.pyreft_format import load_pyreft_folder
from commandv_interp.adapters.steering_vector import (SteeringVectorEdit, load_steering_file, steering_edits,
                                                      steering_from_object)

__all__ = ["Edit", "EditKind", "EDIT_KINDS", "apply_edit", "edit_kind", "load_edit", "restrict_edit"]

Edit = Adapter | LoraEdit | SteeringVectorEdit
"""A donor edit: a ReFT :class:`Adapter` (pyreft), a PEFT :class:`LoraEdit` or a :class:`SteeringVectorEdit`."""
EditKind = Literal["pyreft", "lora", "steering"]
EDIT_KINDS: tuple[str, ...] = get_args(EditKind)


def edit_kind(source: str | Path | object) -> EditKind:
    """The kind of edit at ``source`` from its contents: ``lora`` (a folder with ``adapter_config.json``),
    ``pyreft`` (a folder with ``config.json``), ``steering`` (a ``.safetensors`` file, or a steering-vectors /
    repeng object), or the kind of an :data:`Edit` object.

    Raises:
        ValueError: none of these (naming what was found).
    """
    if isinstance(source, Adapter):
        return "pyreft"
    if isinstance(source, LoraEdit):
        return "lora"
    if isinstance(source, SteeringVectorEdit) or hasattr(source, "layer_activations") or hasattr(source, "directions"):
        return "steering"
    if not isinstance(source, (str, Path)):
        raise ValueError(f"cannot tell the edit kind of a {type(source).__name__}; pass a folder or file path")
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return "lora"
        if (path / "config.json").is_file():
            return "pyreft"
        raise ValueError(f"{str(path)!r} holds neither adapter_config.json (a PEFT LoRA) nor config.json (a pyreft "
                         "adapter); pass the folder the adapter was saved to")
    if path.is_file() and path.suffix == ".safetensors":
        return "steering"
    raise ValueError(f"{str(path)!r} is not a LoRA or pyreft folder nor a steering-vector .safetensors file")


def load_edit(source: str | Path | object, scale: float | None = None, base_model: str | None = None) -> Edit:
    """Read a donor edit of any kind (see :func:`edit_kind`); an :data:`Edit` object is returned as is.

    Args:
        source: a folder, a ``.safetensors`` steering file, or a steering-vectors / repeng object.
        scale: a steering vector's multiplier (default: the file's ``scale`` metadata, 1 for objects).
        base_model: a LoRA's base model name, overriding its config's (see :meth:`LoraEdit.check_model`).

    Example:
        >>> from commandv_interp import zoo
        >>> load_edit(zoo.adapter_dir("llama-6x128", "refusal")).layers
        [0, 2, 4]
    """
    if isinstance(source, (Adapter, LoraEdit, SteeringVectorEdit)):
        return source
    kind = edit_kind(source)
    if kind == "lora":
        return load_peft_lora(source, base_model)
    if kind == "pyreft":
        return load_pyreft_folder(source)
    if isinstance(source, (str, Path)):
        return load_steering_file(source, scale)
    return steering_from_object(source, 1.0 if scale is None else scale)


def restrict_edit(edit: Edit, layers: list[int]) -> Edit | None:
    """``edit`` acting at ``layers`` only (those it has), or None when it acts at none of them."""
    if isinstance(edit, Adapter):
        keep = [layer for layer in edit.layers if layer in set(layers)]
        return edit.restricted(keep) if keep else None
    return edit.restricted(layers)


@contextlib.contextmanager
def apply_edit(donor_model: ModelAccess, edit: Edit | None, alpha: float = 1.0) -> Iterator[ModelAccess]:
    """Apply ``edit`` (scaled by ``alpha``) to its own model inside the block; ``None`` applies nothing.

    Args:
        donor_model: the model the edit was made for (``ModelAccess`` or anything ``open_model`` accepts).
        edit: a ReFT adapter (at its own positions), a LoRA (every token) or a steering vector (every token).
        alpha: a scale on the edit (the adapter's deltas, the LoRA's scaling, the vector's scale).
    """
    access = open_model(donor_model)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    if edit is None:
        yield access
    elif isinstance(edit, LoraEdit):
        with lora_applied(access, edit, alpha):
            yield access
    elif isinstance(edit, SteeringVectorEdit):
        with access.edited(steering_edits(access, edit, alpha)):
            yield access
    elif isinstance(edit, Adapter):
        with access.edited(adapter_edits(access, edit, None, alpha)):
            yield access
    else:
        raise ValueError(f"apply_edit takes an Adapter, LoraEdit or SteeringVectorEdit, got {type(edit).__name__}")
