"""App (edit_kind): consumes a CLI donor-edit spec (``zoo:<model>:<behavior>``, a pyreft or PEFT LoRA folder, or a
steering-vector ``.safetensors`` file), produces the loaded edit and the one line that names its kind.

The kind is read off the contents (:func:`~commandv_interp.adapters.edit.edit_kind`); an unknown or inconsistent
folder raises ``ValueError``, which the CLI reports as one ``error:`` line with exit code 2. A LoRA whose target
modules or shapes the donor lacks is refused when it is first applied to the donor.
"""

from __future__ import annotations

from commandv_interp.adapters.edit import Edit, edit_kind, load_edit
from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.lora import LoraEdit

__all__ = ["donor_edit", "describe_edit"]


def describe_edit(edit: Edit) -> str:
    """One line naming the edit's kind and shape, e.g. ``donor edit: PEFT LoRA, rank 8, 42 modules, layers 0-5``."""
    layers = edit.layers
    span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {','.join(map(str, layers))}"
    if isinstance(edit, LoraEdit):
        return f"donor edit: PEFT LoRA, rank {edit.rank}, {len(edit.modules)} modules, {span}"
    if isinstance(edit, Adapter):
        return f"donor edit: pyreft {edit.kind} adapter, rank {edit.rank}, {span}"
    return f"donor edit: steering vector, scale {edit.scale:g}, {span}"


def donor_edit(spec: str, donor: str, zoo_adapter) -> tuple[Edit, str]:
    """The edit at ``spec`` and its one-line description; ``zoo:`` specs go through ``zoo_adapter(spec)`` (the CLI's
    zoo adapter reader), anything else through :func:`~commandv_interp.adapters.edit.load_edit`.

    A LoRA whose base model is named otherwise than ``donor`` (the CLI's donor: a checkpoint directory or zoo model
    name) is refused here, before any model loads."""
    if spec.startswith("zoo:"):
        edit = zoo_adapter(spec)
    else:
        edit_kind(spec)  # the clear error for an unknown folder before anything is read
        edit = load_edit(spec)
    if isinstance(edit, LoraEdit) and edit.base_model and _short(edit.base_model) != _short(donor):
        raise ValueError(f"this LoRA was trained on {edit.base_model!r} but the donor is {donor!r}; pass the LoRA's "
                         "base model as the donor")
    return edit, describe_edit(edit)


def _short(name: str) -> str:
    return str(name).rstrip("/").split("/")[-1]
