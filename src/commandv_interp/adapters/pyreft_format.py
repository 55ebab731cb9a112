"""Stage 5 (adapters): consumes a pyreft/pyvene adapter folder, produces an :class:`Adapter` (and writes one back).

Folder layout (as pyvene's ``save`` writes it): ``config.json`` with parallel lists ``representations``,
``intervention_types``, ``intervention_dimensions``, ``sorted_keys`` …, and one ``intkey_<key>.bin`` per
intervention (a torch state dict; loaded with ``weights_only=True``). Keys look like
``layer_<l>_comp_block_output_unit_pos_nunit_1#0``. pyvene/pyreft are not imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from commandv_interp.adapters.interventions import INTERVENTION_KINDS, Adapter, Intervention
from commandv_interp.io import read_json

__all__ = ["load_pyreft_folder", "save_pyreft_folder"]

_KEY = re.compile(r"^layer_(\d+)_comp_(\w+?)_unit_(\w+?)_nunit_(\d+)#(\d+)$")
_TYPE = re.compile(r"([A-Za-z]+Intervention)")
META_FILE = "commandv_metadata.json"


def _kind_of(type_string: str, folder: Path) -> type[Intervention]:
    match = _TYPE.search(type_string)
    name = match.group(1) if match else type_string
    if name not in INTERVENTION_KINDS:
        raise ValueError(f"{str(folder)!r}: unsupported intervention type {type_string!r}; supported: "
                         f"{sorted(k for k in INTERVENTION_KINDS if k.endswith('Intervention'))}")
    return INTERVENTION_KINDS[name]


def load_pyreft_folder(path: str | Path) -> Adapter:
    """Read a pyreft adapter folder into an :class:`Adapter` (tensors keep their stored dtype).

    Raises:
        FileNotFoundError: the folder, its ``config.json`` or a ``.bin`` is missing.
        ValueError: malformed config, unknown intervention type, a component other than ``block_output``,
            shapes that disagree with the config, or two interventions at one layer.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {str(folder)!r} does not exist")
    config = read_json(folder / "config.json")
    try:
        keys, types = config["sorted_keys"], config["intervention_types"]
        reps, dims = config["representations"], config["intervention_dimensions"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{str(folder / 'config.json')!r} is not a pyvene config (missing {err}); "
                         "re-save the adapter with pyreft") from err
    if not (len(keys) == len(types) == len(reps) == len(dims)):
        raise ValueError(f"{str(folder)!r}: config lists have different lengths")
    interventions: dict[int, Intervention] = {}
    for key, type_string, rep, dim in zip(keys, types, reps, dims):
        match = _KEY.match(key)
        if not match:
            raise ValueError(f"{str(folder)!r}: cannot parse intervention key {key!r}")
        layer, component = int(match.group(1)), match.group(2)
        if component != "block_output":
            raise ValueError(f"{str(folder)!r}: component {component!r} at layer {layer} is not supported; "
                             "Command-V pastes residual-stream (block_output) interventions only")
        if layer in interventions:
            raise ValueError(f"{str(folder)!r}: two interventions at layer {layer}; one per layer is supported")
        bin_path = folder / f"intkey_{key}.bin"
        if not bin_path.is_file():
            raise FileNotFoundError(f"{str(bin_path)!r} is missing; the folder is incomplete")
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
        cls = _kind_of(type_string, folder)
        rank = int(rep[4]) if len(rep) > 4 and rep[4] is not None else None
        source = state.get("learned_source.weight", state.get("weight"))
        if source is None:
            raise ValueError(f"{str(bin_path)!r} has no learned_source weight; keys: {sorted(state)}")
        rank = rank or source.shape[0]
        if source.shape != (rank, int(dim)):
            raise ValueError(f"{str(bin_path)!r}: learned_source is {tuple(source.shape)}, config says rank {rank} "
                             f"× dim {dim}")
        iv = cls(int(dim), rank) if cls.kind in ("direft", "loreft") else \
            cls(int(dim), rank, proj_bias="proj_layer.bias" in state)
        iv = iv.to(source.dtype)
        iv.load_state_dict(state)
        interventions[layer] = iv
    meta = read_json(folder / META_FILE) if (folder / META_FILE).is_file() else {}
    positions = meta.get("positions", "last")
    return Adapter(interventions, positions=positions, first_last_k=meta.get("first_last_k"),
                   metadata=meta.get("metadata", {"source": str(folder)}))


def save_pyreft_folder(adapter: Adapter, path: str | Path) -> Path:
    """Write ``adapter`` in the pyreft folder layout, atomically (temporary folder, then rename)."""
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        keys, types, reps, dims = [], [], [], []
        for layer in adapter.layers:
            iv = adapter.interventions[layer]
            key = f"layer_{layer}_comp_block_output_unit_pos_nunit_1#0"
            torch.save({k: v.detach().clone() for k, v in iv.state_dict().items()}, tmp / f"intkey_{key}.bin")
            keys.append(key)
            types.append(f"<class 'pyreft.interventions.{iv.pyreft_name}'>")
            reps.append([layer, "block_output", "pos", 1, iv.rank] + [None] * 9)
            dims.append(iv.d_model)
        config = {"intervention_constant_sources": [True] * len(keys), "intervention_dimensions": dims,
                  "intervention_types": types, "mode": "parallel", "representations": reps, "sorted_keys": keys}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        meta = {"positions": adapter.positions, "first_last_k": adapter.first_last_k, "metadata": adapter.metadata}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder
