"""Consumes a model object, produces a :class:`ModelAccess`.

``open_model`` dispatches on what it is given:

- a Hugging Face causal LM object or a local checkpoint directory → nnsight backend;
- a TransformerLens ``TransformerBridge`` → TransformerLens backend.
"""

from __future__ import annotations

from pathlib import Path

import torch

from commandv_interp.access.base import Batch, EditContext, EditFn, ModelAccess, StopForward
from commandv_interp.access.nnsight_backend import NNsightAccess
from commandv_interp.access.positions import gather_rows, last_token_index, prompt_position_mask
from commandv_interp.access.prefix import PrefixStates
from commandv_interp.access.recording import batches, forward_flops, recorded_states, recording, token_flops
from commandv_interp.access.tl_backend import TransformerLensAccess, hook_name

__all__ = [
    "Batch",
    "EditContext",
    "EditFn",
    "ModelAccess",
    "NNsightAccess",
    "PrefixStates",
    "StopForward",
    "TransformerLensAccess",
    "batches",
    "gather_rows",
    "hook_name",
    "last_token_index",
    "open_model",
    "prompt_position_mask",
    "forward_flops",
    "token_flops",
    "recorded_states",
    "recording",
]


def open_model(obj: object, tokenizer: object | None = None, name: str | None = None) -> ModelAccess:
    """Open a model for reading and editing its residual stream.

    Args:
        obj: a ``ModelAccess`` (returned as is), a TransformerLens ``TransformerBridge``, an nnsight model
            (``LanguageModel``/``TransformersModel``; the way to name a hub model for NDIF), a Hugging Face
            causal LM, or a path to a local checkpoint directory (loaded offline, no remote code).
        tokenizer: the tokenizer for a Hugging Face model object (loaded from the directory if a path
            is given and this is None).
        name: optional display name.

    Returns:
        A :class:`ModelAccess` on the TransformerLens or nnsight backend.
    """
    if isinstance(obj, ModelAccess):
        return obj
    if _is_nnsight_model(obj):  # an nnsight model (LanguageModel/TransformersModel): keep it, remote needs its id
        return NNsightAccess(obj._module, tokenizer or getattr(obj, "tokenizer", None), name=name, envoy=obj)
    if type(obj).__name__ == "TransformerBridge":
        return TransformerLensAccess(obj, name=name)
    if isinstance(obj, str) and not Path(obj).exists() and _looks_like_hub_id(obj):
        return _open_hub_model(obj, tokenizer, name)
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a local checkpoint directory (no config.json); "
                "pass a Hugging Face model object, a directory written by save_pretrained or a hub id 'org/name'"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        return NNsightAccess(model, tokenizer, name=name or path.name)
    if isinstance(obj, torch.nn.Module) and hasattr(obj, "config"):
        return NNsightAccess(obj, tokenizer, name=name)
    raise ValueError(
        f"open_model cannot open a {type(obj).__name__}; pass a Hugging Face causal LM, a checkpoint "
        "directory or a TransformerLens TransformerBridge"
    )


def _looks_like_hub_id(spec: str) -> bool:
    """``org/name`` (one slash, no path-like parts): what the Hugging Face hub names a model."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def _open_hub_model(model_id: str, tokenizer: object | None, name: str | None) -> ModelAccess:
    """A hub model through nnsight's ``LanguageModel`` (its id names remote NDIF requests); offline, from the local
    Hugging Face cache only, with no remote code."""
    from nnsight import LanguageModel

    try:
        model = LanguageModel(model_id, dispatch=True, torch_dtype=torch.float32, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the hub model {model_id!r}: it is not a local directory, and loading it "
                         f"failed ({str(error).splitlines()[0][:200]}); offline (HF_HUB_OFFLINE=1) only models in "
                         "the Hugging Face cache load: download it first, or pass a checkpoint directory") from error
    return NNsightAccess(model._module, tokenizer or model.tokenizer, name=name or model_id, envoy=model)


def _is_nnsight_model(obj: object) -> bool:
    # nnsight is imported lazily: importing it mounts `.save` on every object, which must not happen before
    # other packages (beartype) have initialised
    is_envoy = any(c.__name__ == "Envoy" and c.__module__.startswith("nnsight") for c in type(obj).__mro__)
    return is_envoy and isinstance(getattr(obj, "_module", None), torch.nn.Module)
