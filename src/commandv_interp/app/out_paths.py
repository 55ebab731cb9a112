"""App (out_paths): consumes a command's ``--out`` and its inputs (paths, checkpoint folders, ``zoo:`` specs and zoo
model names), produces the output path once it is safe to write, or one ``ValueError`` naming the clash.

One check for every subcommand (:func:`check_out`):

- every input is resolved to its real path; a zoo spec or zoo model name stands for what it reads from the zoo
  (``--zoo-root`` and the package's shipped zoo data): a model's checkpoint folder, an adapter folder, the manifest;
- ``--out`` may not equal, contain or lie inside any input;
- a file output may not be a folder or lie under a file;
- a folder output must be new, empty, or this command's own earlier output: a folder holding ``OUT_MARKER`` of the
  same command (:func:`mark_out`: written when the command starts writing or has finished), or the command's own kind file (``transfer.json`` of a transfer,
  an adapter's ``config.json`` for ``compile``, the zoo's ``manifest.json`` for ``zoo train``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OUT_MARKER", "check_out", "mark_out", "input_paths", "shipped_zoo_dir"]

OUT_MARKER = "commandv_output.json"  # {"kind": "commandv.output", "command": ...}: marks a folder as a command's output
_MARKER_KIND = "commandv.output"
_KIND_FILES = {"transfer": ("transfer.json", "commandv.transfer"), "compile": ("config.json", None),
               "zoo train": ("manifest.json", None)}
_MARKED = {"transfer", "analyze", "sweep", "demo"}  # folder commands that mark their output when the check passes


def shipped_zoo_dir() -> Path | None:
    """The package's zoo data folder, located without importing the zoo (and torch)."""
    spec = importlib.util.find_spec("commandv_interp.zoo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _zoo_roots(zoo_root: Path | None) -> list[Path]:
    """The zoo folders a name may be read from: ``--zoo-root``, the shipped zoo and its other worlds."""
    shipped = shipped_zoo_dir()
    roots = [Path(zoo_root)] if zoo_root is not None else []
    if shipped is not None and shipped.is_dir():
        roots += [shipped] + [p for p in sorted(shipped.iterdir()) if (p / "manifest.json").is_file()]
    return [root for root in roots if root.is_dir()]


def _zoo_parts(spec: str, root: Path) -> list[Path]:
    """What ``spec`` reads from the zoo at ``root``: ``zoo:<model>:<behavior>`` its adapter folder, a model name its
    checkpoint folder; the zoo's manifest either way (``zoo:<behavior>:<split>`` prompts come from code)."""
    parts = spec.split(":")
    if spec.startswith("zoo:") and len(parts) == 3:
        candidates = [root / parts[1] / "adapters" / parts[2]]
    elif spec.startswith("zoo:") and len(parts) == 4:  # zoo:<model>:<behavior>:<lora|steering>
        folder = root / "edits" / parts[1] / parts[2]
        candidates = [folder / "lora", folder / "steering.safetensors", root / parts[1] / "adapters" / parts[2]]
    elif not spec.startswith("zoo:") and "/" not in spec and os.sep not in spec:
        candidates = [root / spec]
    else:
        candidates = []
    return [p for p in candidates if p.name and p.exists()] + [root / "manifest.json"]


def input_paths(inputs: Iterable[object], zoo_root: Path | None = None) -> list[tuple[str, Path]]:
    """``(label, real path)`` of every input that exists; a zoo spec or zoo model name gives what it reads from each
    zoo folder it may come from."""
    out: list[tuple[str, Path]] = []
    for given in inputs:
        if given is None:
            continue
        text = str(given)
        if Path(text).exists():
            out.append((repr(text), Path(text).resolve()))
            continue
        for root in _zoo_roots(zoo_root):
            out += [(f"{text!r} ({str(part)!r})", part.resolve()) for part in _zoo_parts(text, root)
                    if part.exists()]
    return out


def _shown(path: Path, option: str) -> str:
    text = str(path)
    here = " (the current folder)" if path.resolve() == Path.cwd().resolve() else ""
    return f"{option} {text!r}{here}"


def _clash(out: Path, inputs: list[tuple[str, Path]], option: str) -> None:
    real = out.resolve()
    for given, path in inputs:
        if real == path:
            raise ValueError(f"{_shown(out, option)} is also an input of this command ({given}); write to a new "
                             "path")
        if path in real.parents:
            raise ValueError(f"{_shown(out, option)} lies inside the input {given}; writing there could replace "
                             "it: choose a path outside it")
        if real in path.parents:
            raise ValueError(f"{_shown(out, option)} contains the input {given}; writing there could replace it: "
                             "choose a new folder")


def _is_own(folder: Path, command: str) -> bool:
    marker = folder / OUT_MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and data.get("kind") == _MARKER_KIND and data.get("command") == command
    name, kind = _KIND_FILES.get(command, (None, None))
    if name is None or not (folder / name).is_file():
        return False
    if kind is None:
        return True
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == kind


def _check_folder(out: Path, command: str, option: str) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {str(out)!r} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not _is_own(out, command):
        own = _KIND_FILES.get(command, (OUT_MARKER, None))[0] if command not in _MARKED else OUT_MARKER
        what = "is not an adapter folder" if command == "compile" else f"is not an earlier `commandv {command}` output"
        raise ValueError(f"{_shown(out, option)} is not empty and {what} (no {own}); give a new or empty folder")


def _check_file(out: Path, option: str) -> None:
    if out.is_dir():
        raise ValueError(f"{_shown(out, option)} is a folder; give a file path such as "
                         f"{str(out / ('out' + (out.suffix or '.safetensors')))!r}")


def check_out(out: Path, inputs: Iterable[object] = (), *, folder: bool, command: str, zoo_root: Path | None = None,
              option: str = "--out") -> Path:
    """``out`` once it is safe to write (see the module docstring); nothing is written here (see :func:`mark_out`).

    Raises:
        ValueError: an empty path, a file where a folder is wanted (or the reverse), a path under a file, a clash
            with an input, or a non-empty folder that is not this command's output.
    """
    if str(out).strip() == "":
        raise ValueError(f"{option} is empty; give a {'folder' if folder else 'file'} path")
    out = Path(out)
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{option} {str(out)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if out.exists() and folder != out.is_dir():
        _check_folder(out, command, option) if folder else _check_file(out, option)
    _clash(out, input_paths(inputs, zoo_root), option)
    if folder:
        _check_folder(out, command, option)
    return out


def mark_out(out: Path, command: str) -> None:
    """Mark ``out`` (created if needed) as ``command``'s output, so that a re-run may write there again: called once
    a command has checked its inputs and starts writing (a sweep, to resume), or when it has finished."""
    if command not in _MARKED or (out / OUT_MARKER).is_file():
        return
    from commandv_interp.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / OUT_MARKER, {"kind": _MARKER_KIND, "command": command})
