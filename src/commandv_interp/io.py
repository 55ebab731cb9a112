"""Consumes bytes-producing callbacks and artifact files, produces files written atomically and
validated tensors.

Every artifact of the library (profiles, converters, adapters) is written to a scratch file next to the
target (:func:`temp_path`, reused by the next save) and renamed into place, so a crash never leaves a half-written
file behind; new files and folders get the permissions the process's umask gives, an overwritten file keeps its own.

Reading a safetensors artifact checks the header against the file's own size before any tensor is
allocated, the metadata's schema, and the mandatory checksum (SHA-256 over names, dtypes, shapes, bytes and the
metadata itself) that :func:`write_safetensors` stores in the metadata.
A folder of files is verified as a whole by its manifest (:mod:`commandv_interp.manifest`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = ["atomic_write", "read_json", "write_json", "read_safetensors", "write_safetensors", "tensors_checksum",
           "check_fields", "check_finite", "check_output_path", "check_input_file", "DegenerateDataWarning",
           "file_mode", "dir_mode", "temp_path", "clean_stale_temps", "write_error", "is_io_failure", "finite_or_null"]

META_KEY = "commandv"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class DegenerateDataWarning(UserWarning):
    """Data that runs but cannot give a meaningful result (constant profiles, collapsed maps, zero converters)."""


def _umask() -> int:
    """The process's umask, read from ``/proc`` where there is one (setting it to read it races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions a new file gets under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions a new folder gets under the current umask (``0o777 & ~umask``)."""
    return 0o777 & ~_umask()


def check_output_path(path: str | Path, inputs: tuple[str | Path | None, ...] = (), option: str = "--out") -> Path:
    """Refuse an output path that is empty, a folder, under a file, or one of ``inputs`` (never overwrite an input).

    >>> check_output_path("/", option="--out")
    Traceback (most recent call last):
    ...
    ValueError: --out '/' is a folder; give a file path such as '/out.safetensors'
    """
    if str(path).strip() in ("", "."):
        raise ValueError(f"{option} is empty; give a file path")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file path such as "
                         f"{str(path / ('out' + (path.suffix or '.safetensors')))!r}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    for given in inputs:
        if given is not None and Path(given).exists() and path.exists() and path.resolve() == Path(given).resolve():
            raise ValueError(f"{option} {str(path)!r} is also an input of this command; write to a new path")
    return path


def check_input_file(path: str | Path, what: str) -> Path:
    """Refuse a missing path or a folder where a file is expected, naming ``what`` it should be."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file; pass the file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


TMP_SUFFIX = ".commandv-tmp"  # a save writes `.<name>.commandv-tmp` next to its target: a killed save's leftover
# is the next save's scratch file (removed first), never a new hidden file


def temp_path(path: Path) -> Path:
    """The one scratch path a save of ``path`` writes to before the rename (deterministic, so it is reused)."""
    return path.parent / f".{path.name}{TMP_SUFFIX}"


def clean_stale_temps(path: Path) -> None:
    """Remove what a killed save of ``path`` left next to it: the scratch file or folder, and the randomly named
    ``.<name>.*.tmp`` files of earlier versions."""
    stale = [temp_path(path), *path.parent.glob(f".{glob_escape(path.name)}.*.tmp")] if path.parent.is_dir() else []
    for leftover in stale:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists() or leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def write_error(path: Path, err: BaseException, what: str = "") -> OSError:
    """One ``OSError`` for any failed write of ``path`` (``ENOSPC``, a permission, safetensors' or torch's own
    exceptions wrapping them), naming the path and the fix."""
    code = getattr(err, "errno", None)
    text = getattr(err, "strerror", None) or " ".join(str(err).split())
    if code is None and ("os error 28" in text or "No space left" in text):
        code = errno.ENOSPC
    full = code == errno.ENOSPC or _disk_full(path.parent)
    if full:
        code, text = errno.ENOSPC, "no space left on the device"
    fix = "free disk space or choose another path" if full else "check the path's permissions or choose another path"
    name = f"{what} {str(path)!r}" if what else repr(str(path))
    return OSError(code or errno.EIO, f"cannot write {name} ({text}); {fix}; any earlier file there is intact")


def is_io_failure(err: BaseException, path: Path) -> bool:
    """Whether a non-``OSError`` exception of a writer (torch, safetensors) reports a failed write, not a bug."""
    text = str(err)
    return _disk_full(path.parent) or any(sign in text for sign in (
        "basic_ios", "file write failed", "No space left", "os error", "IoError", "Input/output error"))


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 4096


def _mode_for(path: Path) -> int:
    """An existing output keeps its permissions (a 0600 file stays 0600); a new one gets the umask's."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return file_mode()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``.

    ``tmp_path`` is :func:`temp_path` (``.<name>.commandv-tmp``): a save killed midway leaves it, and the next save
    of ``path`` removes it first. An existing ``path`` keeps its permissions; a new one gets the umask's.

    Raises:
        ValueError: ``path`` is a folder or lies under a file.
        OSError: the write failed (disk full, permissions; also safetensors' and torch's wrapped I/O errors); the
            message names ``path``; nothing is left behind and an earlier ``path`` is intact.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "x.txt", lambda p: p.write_text("hi")).read_text()
    'hi'
    """
    path = check_output_path(path, option="output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
    except OSError as err:
        raise write_error(path, err) from err
    tmp_path, mode = temp_path(path), _mode_for(path)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as err:
        raise write_error(path, err) from err
    except Exception as err:  # torch's "basic_ios::clear" RuntimeError, safetensors' SafetensorError on I/O
        if not is_io_failure(err, path):
            raise
        raise write_error(path, err) from err
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: object) -> Path:
    """Write ``obj`` as indented JSON, atomically; NaN/inf floats become ``null`` (JSON has no such numbers).

    >>> import tempfile, pathlib
    >>> json.loads(write_json(pathlib.Path(tempfile.mkdtemp()) / "x.json", {"r2": float("nan")}).read_text())
    {'r2': None}
    """
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def finite_or_null(obj: object) -> object:
    """``obj`` as :func:`write_json` stores it: NaN/inf floats become ``None`` (tuples become lists)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def read_json(path: str | Path) -> object:
    """Read a JSON file, raising a clear error if it is missing, a folder, not UTF-8 or malformed."""
    path = check_input_file(path, "JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); re-create the "
                         "file") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); re-create the file") from err


def check_fields(meta: Mapping, schema: Mapping[str, type | tuple], where: str) -> None:
    """Refuse metadata whose fields are missing or of another type (``bool`` is not an ``int``; ``float`` accepts
    ints).

    >>> check_fields({"n": "3"}, {"n": int}, "x.safetensors")
    Traceback (most recent call last):
    ...
    ValueError: x.safetensors: metadata field 'n' must be int, got '3'; re-create the file
    """
    for name, types in schema.items():
        types = types if isinstance(types, tuple) else (types,)
        value = meta.get(name, _MISSING)
        if value is _MISSING:
            raise ValueError(f"{where}: metadata lacks field {name!r}; re-create the file")
        ok = any(value is None if t is type(None) else
                 isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)) or
                 (t is float and isinstance(value, int) and not isinstance(value, bool)) for t in types)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{where}: metadata field {name!r} must be {names}, got {value!r}; re-create the file")


_MISSING = object()


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Refuse a floating tensor with NaN or inf, naming ``what`` and the ``fix``."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} has {n_bad} NaN/inf values; {fix}")


def tensors_checksum(tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> str:
    """SHA-256 (16 hex digits) over the sorted names, dtypes, shapes and bytes of ``tensors`` and, when given, the
    metadata ``meta`` (canonical JSON, its ``checksum`` key left out): what :func:`write_safetensors` stores."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if meta is not None:
        h.update(b"\0meta:")
        h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True,
                            allow_nan=False).encode())
    return h.hexdigest()[:16]


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: dict, what: str) -> Path:
    """Write ``tensors`` with ``meta`` (plus its ``checksum``, covering tensors and metadata) as JSON under
    metadata key ``commandv``, atomically.

    Refuses NaN/inf in any floating tensor, so no saved artifact ever holds them.
    """
    from safetensors.torch import save_file

    tensors, seen = {name: t.detach().contiguous() for name, t in tensors.items()}, set()
    for name, t in tensors.items():  # safetensors refuses tensors sharing memory: store such views as copies
        if t.untyped_storage().data_ptr() in seen:
            tensors[name] = t.clone()
        seen.add(t.untyped_storage().data_ptr())
    for name, t in tensors.items():
        check_finite(t, f"{what} tensor {name!r}", f"not writing {str(path)!r}; recompute it from finite inputs")
    meta = json.loads(json.dumps(meta, allow_nan=False))  # the metadata exactly as it will be read back
    meta["checksum"] = tensors_checksum(tensors, meta)
    text = json.dumps(meta, sort_keys=True, allow_nan=False)
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={META_KEY: text}))


def _header(path: Path, what: str) -> dict:
    """The safetensors header, checked against the file's size before anything is allocated (only the header is
    read here)."""
    size = path.stat().st_size
    bad = f"{what} {str(path)!r} is not a safetensors file"
    if size < 8:
        raise ValueError(f"{bad} ({size} bytes: empty or truncated); re-create it")
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{bad} (header of {n} bytes in a {size}-byte file: truncated or another format); "
                             "re-create it")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{bad} (unreadable header); re-create it") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad} (header is a {type(header).__name__}); re-create it")
    body = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES and isinstance(entry.get("shape"), list) \
            and all(isinstance(s, int) and s >= 0 for s in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(o, int) for o in entry["data_offsets"])
        if not ok:
            raise ValueError(f"{bad} (malformed entry for tensor {name!r}); re-create it")
        start, end = entry["data_offsets"]
        want = math.prod(entry["shape"]) * _DTYPE_BYTES[entry["dtype"]]
        if not 0 <= start <= end or end - start != want:
            raise ValueError(f"{what} {str(path)!r}: tensor {name!r} of shape {entry['shape']} needs {want} bytes but "
                             f"its header gives it {end - start} (corrupted); re-create it")
        if end > body:
            raise ValueError(f"{what} {str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data but "
                             f"the file holds only {body} data bytes ({size} bytes in all); re-create it")
    return header


def read_safetensors(path: str | Path, what: str, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of an artifact written by :func:`write_safetensors`.

    Checks, in order: a file (not a folder) that exists; a header consistent with the file's size; metadata
    ``commandv`` holding a JSON object of ``kind``; the checksum over tensors and metadata (mandatory).

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything else, naming the file and what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = check_input_file(path, what)
    header = _header(path, what)
    raw = header.get("__metadata__", {})
    raw = raw.get(META_KEY) if isinstance(raw, dict) else None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        found = "no" if raw is None else f"a {type(meta).__name__}" if meta is not None else "unreadable"
        raise ValueError(f"{str(path)!r} is not a commandv {what} ({found} commandv metadata object); pass a file "
                         "written by commandv")
    if meta.get("kind") != kind:
        raise ValueError(f"{str(path)!r} is not a commandv {what} (kind={meta.get('kind')!r}, expected {kind!r})")
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read ({err}); re-create it") from err
    stored = meta.get("checksum")
    if not isinstance(stored, str):
        raise ValueError(f"{what} {str(path)!r} has no checksum in its metadata (edited, or written by another "
                         "tool); re-create it with commandv")
    if stored != tensors_checksum(tensors, meta):
        raise ValueError(f"{what} {str(path)!r} is corrupted or edited: its tensors and metadata do not match the "
                         f"checksum {stored!r} it records; re-create it")
    return meta, tensors

