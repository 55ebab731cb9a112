"""Consumes a pyreft/pyvene adapter folder, produces an :class:`Adapter` (and writes one back).

Folder layout (what pyvene's ``IntervenableModel.save`` writes): ``config.json`` with parallel lists
``sorted_keys``, ``representations`` (``[layer, component, unit, max_number_of_units, low_rank_dimension,
None …]``), ``intervention_types`` (``"<class 'pyreft.interventions.NodireftIntervention'>"``),
``intervention_dimensions`` and ``intervention_constant_sources``, plus ``mode``; and one
``intkey_<key>.bin`` per intervention, a ``torch.save``-d state dict, with keys like
``layer_<l>_comp_block_output_unit_pos_nunit_1#0``. We add ``commandv_metadata.json`` (position rule,
activations, free metadata), which pyvene ignores. pyvene/pyreft are not imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from collections import OrderedDict
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from commandv_interp.adapters.adapter import Adapter
from commandv_interp.adapters.interventions import INTERVENTION_KINDS, Intervention
from commandv_interp.io import TMP_SUFFIX, dir_mode, file_mode, is_io_failure, read_json, write_error

__all__ = ["load_pyreft_folder", "save_pyreft_folder", "META_FILE", "parse_pyreft_positions"]

_KEY = re.compile(r"^layer_(\d+)_comp_(\w+?)_unit_([\w.]+?)_nunit_(\d+)#(\d+)$")
_TYPE = re.compile(r"([A-Za-z_]+Intervention)'?>?$")
_POSITIONS = re.compile(r"^(?:l(?P<last>\d+)|f(?P<first>\d+)\+l(?P<k>\d+))$")
_FOLDER_POSITIONS = re.compile(r"-(l\d+|f\d+\+l\d+)$")
META_FILE = "commandv_metadata.json"
_CONFIG_LISTS = ("sorted_keys", "intervention_types", "representations", "intervention_dimensions")


def parse_pyreft_positions(spec: str) -> tuple[str, int | None]:
    """Map pyreft's position string to ``(PositionRule, first_last_k)``.

    >>> parse_pyreft_positions("l1"), parse_pyreft_positions("f3+l3")
    (('last', None), ('first_last', 3))
    """
    match = _POSITIONS.match(spec)
    if match and match.group("last") == "1":
        return "last", None
    if match and match.group("first") is not None and match.group("first") == match.group("k"):
        return "first_last", int(match.group("k"))
    raise ValueError(f"pyreft positions {spec!r} are not supported; supported: 'l1' (last prompt token) and "
                     f"'f<k>+l<k>' (first and last k); write {META_FILE} with a PositionRule to override")


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    config = read_json(path)
    if not isinstance(config, dict) or any(not isinstance(config.get(k), list) for k in _CONFIG_LISTS):
        raise ValueError(f"{str(path)!r} is not a pyvene config (needs lists {list(_CONFIG_LISTS)}); "
                         "re-save the adapter with pyreft or save_pyreft_folder")
    lengths = {k: len(config[k]) for k in _CONFIG_LISTS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{str(path)!r}: config lists have different lengths {lengths}; re-save the adapter")
    return config


def _class_of(type_string: object, path: Path) -> type[Intervention]:
    match = _TYPE.search(str(type_string))
    name = match.group(1) if match else str(type_string)
    if name not in INTERVENTION_KINDS:
        supported = sorted(k for k in INTERVENTION_KINDS if k.endswith("Intervention"))
        raise ValueError(f"{str(path)!r}: unsupported intervention type {type_string!r}; supported: {supported}")
    return INTERVENTION_KINDS[name]


def _parse_key(key: object, rep: object, path: Path) -> tuple[int, int | None]:
    """``(layer, low_rank_dimension)`` of one config entry, checking key and representation agree."""
    match = _KEY.match(str(key))
    if not match:
        raise ValueError(f"{str(path)!r}: cannot parse intervention key {key!r}; expected "
                         "'layer_<l>_comp_block_output_unit_pos_nunit_1#0'")
    layer, component, unit = int(match.group(1)), match.group(2), match.group(3)
    if component != "block_output":
        raise ValueError(f"{str(path)!r}: component {component!r} at layer {layer} is not supported; only "
                         "'block_output' (the residual stream after a block) is; retrain on block_output")
    if unit != "pos":
        raise ValueError(f"{str(path)!r}: unit {unit!r} at layer {layer} is not supported; only 'pos' is")
    if not isinstance(rep, (list, dict)):
        raise ValueError(f"{str(path)!r}: representation for {key!r} is {rep!r}, not a list; re-save the adapter")
    fields = rep if isinstance(rep, list) else [rep.get(k) for k in ("layer", "component", "unit",
                                                                       "max_number_of_units", "low_rank_dimension")]
    if len(fields) < 2 or fields[0] != layer or fields[1] != component:
        raise ValueError(f"{str(path)!r}: representation {fields[:2]!r} disagrees with key {key!r}; re-save the adapter")
    rank = fields[4] if len(fields) > 4 else None
    if rank is not None and not _positive_int(rank):
        raise ValueError(f"{str(path)!r}: low_rank_dimension for {key!r} is {rank!r}, not an int >= 1; fix config.json")
    return layer, rank


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_zip(bin_path: Path) -> int:
    """The file's size, after refusing a zip archive whose records unpack to more bytes than the file holds."""
    size = bin_path.stat().st_size
    if zipfile.is_zipfile(bin_path):
        with zipfile.ZipFile(bin_path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > size:
            raise ValueError(f"{str(bin_path)!r} unpacks to {unpacked} bytes from {size} (compressed or crafted "
                             "records); re-save it with pyreft")
    return size


def _check_storage(bin_path: Path, state: dict, size: int) -> None:
    """Refuse tensors that read more bytes than their storage holds (e.g. stride 0 over one element), or that
    together need more bytes than the file holds: nothing is allocated beyond the file's own size."""
    total = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if nbytes > t.untyped_storage().nbytes() or any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
            raise ValueError(f"{str(bin_path)!r}: tensor {key!r} of shape {tuple(t.shape)} views {nbytes} bytes over a "
                             f"{t.untyped_storage().nbytes()}-byte storage (stride {t.stride()}); re-save it with "
                             "pyreft")
        total += nbytes
    if total > size:
        raise ValueError(f"{str(bin_path)!r}: tensors need {total} bytes but the file has {size}; re-save it")


def _load_bin(bin_path: Path) -> dict:
    if not bin_path.is_file():
        raise FileNotFoundError(f"{str(bin_path)!r} is missing; the folder is incomplete, re-save the adapter")
    size = _check_zip(bin_path)
    try:
        state = torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or non-tensor pickles
        raise ValueError(f"{str(bin_path)!r} is not a loadable tensor state dict ({_load_reason(err)}); it is "
                         "refused, never unpickled: re-save it with pyreft from a source you trust") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(bin_path)!r} does not hold a dict of tensors; re-save it with pyreft")
    _check_storage(bin_path, state, size)
    _check_shapes(bin_path, state)
    return state


def _load_reason(err: Exception) -> str:
    """torch's message without its advice to re-run with ``weights_only=False`` (which would run the file's code)."""
    text = " ".join(str(err).split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s and "weights_only" not in s.lower()
                 and "trusted source" not in s.lower() and "arbitrary code" not in s.lower()]
    reason = " ".join(sentences)[:200]
    return reason or type(err).__name__


def _check_shapes(bin_path: Path, state: dict) -> None:
    """Refuse weights whose shapes disagree with the state dict's own ``embed_dim`` (a matrix must have it as one of
    its dimensions), before any matmul sees them."""
    embed = state.get("embed_dim")
    if embed is None or embed.numel() != 1 or embed.is_floating_point() or int(embed) < 1:
        return  # interventions.from_state_dict names a missing or malformed embed_dim
    d = int(embed)
    for key, t in state.items():
        if key in ("embed_dim", "interchange_dim") or t.ndim == 0:
            continue
        if t.ndim > 2 or (t.ndim == 2 and d not in t.shape):
            raise ValueError(f"{str(bin_path)!r}: tensor {key!r} has shape {tuple(t.shape)} but the state dict's "
                             f"embed_dim is {d}; re-save the adapter with pyreft")


def _build(cls: type[Intervention], state: dict, act: str, dim: object, rank: int | None, path: Path) -> Intervention:
    if not _positive_int(dim):
        raise ValueError(f"{str(path.parent / 'config.json')!r}: intervention_dimensions holds {dim!r}, not an int "
                         ">= 1; fix config.json")
    try:
        iv = cls.from_state_dict(state, act)
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"{str(path)!r} does not match {cls.pyreft_name}'s parameters ({err}); "
                         "check intervention_types in config.json") from err
    if iv.d_model != dim or (rank is not None and iv.rank != rank):
        raise ValueError(f"{str(path)!r} holds d_model={iv.d_model}, rank={iv.rank} but config.json says "
                         f"intervention_dimensions={dim!r}, low_rank_dimension={rank!r}; fix config.json")
    return iv


def _positions_and_metadata(folder: Path, meta: dict | None) -> tuple[str, int | None, dict]:
    """Position rule from our metadata file, else pyreft's ``training_metadata.json``, else the folder-name suffix."""
    if meta is not None:
        positions, k, info = meta.get("positions", "last"), meta.get("first_last_k"), meta.get("metadata", {})
        if not isinstance(positions, str) or not (k is None or _positive_int(k)) or not isinstance(info, dict):
            raise ValueError(f"{str(folder / META_FILE)!r}: positions {positions!r}, first_last_k {k!r} and metadata "
                             "must be a rule name, an int >= 1 or null, and an object; re-save the adapter")
        return positions, k, dict(info)
    info: dict = {"source": str(folder)}
    training_path = folder / "training_metadata.json"
    training = read_json(training_path) if training_path.is_file() else None
    suffix = _FOLDER_POSITIONS.search(folder.name)
    if isinstance(training, dict):
        info["training_metadata"] = training
        if "model_name" in training:
            info["model_name"] = training["model_name"]
    if isinstance(training, dict) and isinstance(training.get("positions"), str):
        spec, info["positions_source"] = training["positions"], "training_metadata.json"
    elif suffix:
        spec, info["positions_source"] = suffix.group(1), "folder name"
    else:
        spec, info["positions_source"] = "l1", "default (last prompt token)"
    positions, k = parse_pyreft_positions(spec)
    return positions, k, info


def load_pyreft_folder(path: str | Path) -> Adapter:
    """Read a pyreft adapter folder into an :class:`Adapter`; tensors keep their stored dtype (e.g. bf16).

    Args:
        path: folder with ``config.json`` and ``intkey_<key>.bin`` files.

    Returns:
        One intervention per layer. Without ``commandv_metadata.json``, activations are pyreft's default
        ``linear`` and the position rule comes from ``training_metadata.json``'s ``positions``, the folder
        name's ``-l1``/``-f<k>+l<k>`` suffix, or defaults to ``last``; ``metadata["positions_source"]`` says which.

    Raises:
        FileNotFoundError: the folder, its ``config.json`` or a ``.bin`` is missing.
        ValueError: malformed config or bin, unknown intervention type, a component other than
            ``block_output``, shapes that disagree with the config, or two interventions at one layer.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"adapter folder {str(folder)!r} is a file; pass a pyreft save directory")
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {str(folder)!r} does not exist; pass a pyreft save directory")
    config = _read_config(folder)
    meta = read_json(folder / META_FILE) if (folder / META_FILE).is_file() else None
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"{str(folder / META_FILE)!r} must hold a JSON object; delete or re-save it")
    acts = (meta or {}).get("acts", {})
    if not isinstance(acts, dict):
        raise ValueError(f"{str(folder / META_FILE)!r}: 'acts' must map layers to activation names, got {acts!r}")
    interventions: dict[int, Intervention] = {}
    for key, type_string, rep, dim in zip(*(config[k] for k in _CONFIG_LISTS)):
        layer, rank = _parse_key(key, rep, folder / "config.json")
        if layer in interventions:
            raise ValueError(f"{str(folder / 'config.json')!r}: two interventions at layer {layer}; "
                             "an Adapter holds one per layer, split the folder")
        cls = _class_of(type_string, folder / "config.json")
        bin_path = folder / f"intkey_{key}.bin"
        interventions[layer] = _build(cls, _load_bin(bin_path), acts.get(str(layer), "linear"), dim, rank, bin_path)
    if not interventions:
        raise ValueError(f"{str(folder / 'config.json')!r} lists no interventions; re-save the adapter")
    positions, k, info = _positions_and_metadata(folder, meta)
    try:
        return Adapter(interventions, positions=positions, first_last_k=k, metadata=info)
    except ValueError as err:
        raise ValueError(f"adapter folder {str(folder)!r}: {err}") from None


def _pyvene_config(adapter: Adapter) -> tuple[dict, list[str]]:
    keys = [f"layer_{layer}_comp_block_output_unit_pos_nunit_1#0" for layer in adapter.layers]
    ivs = [adapter.interventions[layer] for layer in adapter.layers]
    config = {
        "intervention_constant_sources": [True] * len(ivs),
        "intervention_dimensions": [iv.d_model for iv in ivs],
        "intervention_types": [f"<class 'pyreft.interventions.{iv.pyreft_name}'>" for iv in ivs],
        "mode": "parallel",
        # RepresentationConfig fields as pyvene serializes them; only layer, component, unit, units, rank are set.
        "representations": [[layer, "block_output", "pos", 1, iv.rank] + [None] * 9
                             for layer, iv in zip(adapter.layers, ivs)],
        "sorted_keys": keys,
    }
    try:
        config["transformers_version"] = importlib_metadata.version("transformers")
    except importlib_metadata.PackageNotFoundError:
        pass
    return config, keys


def _check_target(folder: Path) -> None:
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{str(folder)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / "config.json").is_file())):
        raise ValueError(f"{str(folder)!r} exists and is not an adapter folder; choose a new path or remove it")


def _scratch(folder: Path) -> tuple[Path, Path]:
    """The scratch folders of a save of ``folder`` (the new one, and the old one while they swap): fixed names, so a
    save killed midway leaves them where the next save removes them first."""
    return folder.parent / f".{folder.name}{TMP_SUFFIX}", folder.parent / f".{folder.name}.old{TMP_SUFFIX}"


def _clean_scratch(folder: Path) -> None:
    """Remove a killed save's scratch folders (also the random ``.<name>.<8 chars>`` ones of earlier versions)."""
    tmp, old = _scratch(folder)
    if old.is_dir() and not folder.exists():
        os.replace(old, folder)  # killed between the two renames: the old adapter is put back
    legacy = re.compile(rf"^\.{re.escape(folder.name)}\.(old\.)?[a-z0-9_]{{8}}$")
    for path in [tmp, old, *(p for p in folder.parent.iterdir() if legacy.match(p.name))]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, folder: Path) -> None:
    """Swap ``tmp`` into ``folder``; an existing adapter folder is replaced only once the new one is complete."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = _scratch(folder)[1]
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_pyreft_folder(adapter: Adapter, path: str | Path) -> Path:
    """Write ``adapter`` in pyvene's folder layout plus ``commandv_metadata.json``, atomically.

    Everything is written into a temporary folder next to ``path`` and renamed into place, so a crash never
    leaves a half-written adapter. An existing adapter folder at ``path`` is replaced; any other existing
    non-empty folder is refused.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    folder = Path(path)
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    config, keys = _pyvene_config(adapter)
    meta = {"positions": adapter.positions, "first_last_k": adapter.first_last_k,
            "acts": {str(layer): adapter.interventions[layer].act_name for layer in adapter.layers},
            "metadata": adapter.metadata}
    tmp = _scratch(folder)[0]
    try:
        _clean_scratch(folder)
        tmp.mkdir()
        _write_folder(adapter, keys, config, meta, tmp, folder)
        _install(tmp, folder)
    except OSError as err:
        raise write_error(folder, err, "adapter folder") from err
    except RuntimeError as err:  # torch.save's "basic_ios::clear" / "file write failed" on a full disk
        if not is_io_failure(err, folder):
            raise
        raise write_error(folder, err, "adapter folder") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _kept_mode(path: Path, default: int) -> int:
    """An existing file's (or folder's) permissions, kept when it is replaced; ``default`` for a new one."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return default


def _write_folder(adapter: Adapter, keys: list[str], config: dict, meta: dict, tmp: Path, folder: Path) -> None:
    """The folder's files, written into ``tmp`` with the permissions of the ones they replace in ``folder`` (new
    ones: the umask's)."""
    for layer, key in zip(adapter.layers, keys):
        state = adapter.interventions[layer].state_dict()
        torch.save(OrderedDict((k, v.detach().clone().contiguous()) for k, v in state.items()),
                   tmp / f"intkey_{key}.bin")
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    for child in tmp.iterdir():
        os.chmod(child, _kept_mode(folder / child.name, file_mode()))
    os.chmod(tmp, _kept_mode(folder, dir_mode()))
