"""Consumes the shipped zoo folder, produces models, adapters and the manifest.

The zoo ships inside the package under ``zoo/data``: one Hugging Face checkpoint folder per base model (float16
safetensors and its tokenizer), one pyreft adapter folder per model and behavior under
``<model>/adapters/<behavior>``, and ``manifest.json`` (architecture, sizes, seeds, data fingerprint, training
costs and the behavior table). The main world's files sit at the top of ``zoo/data``; another world's in its own
folder with its own manifest (``zoo/data/heldout``). Everything loads offline.

>>> "llama-6x128" in list_models()  # doctest: +SKIP
True
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Literal, get_args

from commandv_interp.access import ModelAccess, open_model
from commandv_interp.adapters import Adapter, load_adapter as load_adapter_folder
from commandv_interp.io import read_json
from commandv_interp.zoo.world import Behavior, WorldLike, get_world

__all__ = ["DATA", "MANIFEST", "Backend", "manifest", "list_models", "model_dir", "adapter_dir", "load_model",
           "load_adapter", "file_digest", "world_dir"]

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = "manifest.json"
Backend = Literal["nnsight", "transformer_lens"]


def world_dir(world: WorldLike = None) -> Path:
    """The shipped folder of a world's zoo: ``zoo/data`` for the main world, ``zoo/data/<folder>`` for another."""
    return DATA / get_world(world).data


def _root(root: str | Path | None, world: WorldLike) -> Path:
    return Path(root) if root is not None else world_dir(world)


def manifest(root: str | Path | None = None, world: WorldLike = None) -> dict:
    """The zoo manifest: ``{"world_fingerprint", "models": {name: {...}}, "behavior_table": [...]}``.

    Args:
        root: a zoo folder (default: the shipped folder of ``world``).
        world: a ``World`` or its name (``None``: the main world); picks the shipped folder when ``root`` is
            ``None``.
    """
    path = _root(root, world) / MANIFEST
    if not path.is_file():
        flag = "" if get_world(world).name == "main" else f" --world {get_world(world).name}"
        raise FileNotFoundError(f"no zoo manifest at {str(path)!r}; regenerate the zoo with "
                                f"`python -m commandv_interp.zoo.train{flag}` (or pass the folder it wrote)")
    return read_json(path)  # type: ignore[return-value]


def list_models(root: str | Path | None = None, world: WorldLike = None) -> list[str]:
    """Names of the zoo's base models (of ``world``, default the main one), sorted.

    >>> list_models(world="heldout")  # doctest: +SKIP
    ['neox-4x80', 'qwen3-4x112']
    """
    return sorted(manifest(root, world)["models"])


def model_dir(name: str, root: str | Path | None = None, world: WorldLike = None) -> Path:
    """The checkpoint folder of a zoo model (``AutoModelForCausalLM.from_pretrained`` loads it offline)."""
    root = _root(root, world)
    known = list_models(root)
    if name not in known:
        raise ValueError(f"unknown zoo model {name!r} in the {get_world(world).name!r} world; known: {known}")
    return root / name


def adapter_dir(model_name: str, behavior: Behavior, root: str | Path | None = None,
                world: WorldLike = None) -> Path:
    """The pyreft folder of a zoo model's donor adapter for a behavior."""
    if behavior not in get_args(Behavior):
        raise ValueError(f"behavior must be one of {get_args(Behavior)}, got {behavior!r}")
    path = model_dir(model_name, root, world) / "adapters" / behavior
    if not path.is_dir():
        raise FileNotFoundError(f"zoo model {model_name!r} has no {behavior!r} adapter at {str(path)!r}")
    return path


def load_model(name: str, backend: Backend = "nnsight", root: str | Path | None = None,
               world: WorldLike = None) -> ModelAccess:
    """A zoo model in float32 on CPU, opened for reading and editing.

    Args:
        name: one of ``list_models()``.
        backend: ``"nnsight"`` (a ``TransformersModel`` over the HF model) or ``"transformer_lens"``
            (a ``TransformerBridge``; weights are not processed, so residuals equal the HF model's).
        root: another zoo folder (default: the shipped one of ``world``).
        world: a ``World`` or its name (``None``: the main world), e.g. ``"heldout"``.

    Returns:
        What ``open_model`` returns: a ``ModelAccess`` named after the zoo model.
    """
    if backend not in get_args(Backend):
        raise ValueError(f"backend must be one of {get_args(Backend)}, got {backend!r}")
    path = model_dir(name, root, world)
    if backend == "nnsight":
        return open_model(path, name=name)
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=copy.deepcopy(hf), tokenizer=tok)
    return open_model(bridge, name=name)


def load_adapter(model_name: str, behavior: Behavior, root: str | Path | None = None,
                 world: WorldLike = None) -> Adapter:
    """The donor adapter (NodiReFT rank 8, every other layer, last prompt token) of a zoo model for a behavior."""
    return load_adapter_folder(adapter_dir(model_name, behavior, root, world))


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
