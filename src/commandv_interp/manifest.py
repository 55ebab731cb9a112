"""Consumes a folder of files and its configuration, produces the folder's manifest, and later the configuration back
once every file is verified: each listed file's SHA-256, the configuration and a checksum over both, so that nothing
can switch the check off (deleting the checksum key is refused, not skipped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from commandv_interp.io import TMP_SUFFIX, read_json, write_json

__all__ = ["MANIFEST", "file_digest", "write_manifest", "verify_manifest"]

MANIFEST = "manifest.json"
MANIFEST_KIND = "commandv.manifest"


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_checksum(kind: str, config: object, files: Mapping[str, str]) -> str:
    payload = json.dumps({"kind": kind, "config": config, "files": dict(files)}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def write_manifest(folder: str | Path, config: Mapping, files: list[str] | None = None) -> Path:
    """Write ``folder/manifest.json``: the SHA-256 of every file (all regular files under ``folder`` when ``files``
    is None, else those relative paths), ``config`` (the folder's metadata, JSON) and a checksum over both.

    Write the manifest last: :func:`verify_manifest` then refuses any listed file edited, truncated, swapped for
    another or missing, and any edit to the manifest itself (config included).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
    >>> _ = write_manifest(d, {"alpha": 1.0}); verify_manifest(d)
    {'alpha': 1.0}
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder; save the folder's files before its manifest")
    names = files if files is not None else sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(TMP_SUFFIX))
    digests = {}
    for name in names:
        target = folder / name
        if not target.is_file():
            raise ValueError(f"manifest of {str(folder)!r}: {name!r} is not a file in it")
        digests[name] = file_digest(target)
    config = json.loads(json.dumps(dict(config), allow_nan=False))
    body = {"kind": MANIFEST_KIND, "config": config, "files": digests,
            "checksum": _manifest_checksum(MANIFEST_KIND, config, digests)}
    return write_json(folder / MANIFEST, body)


def verify_manifest(folder: str | Path) -> dict:
    """The ``config`` of ``folder``'s manifest, after checking the manifest's checksum and every listed file's digest.

    Raises:
        FileNotFoundError: no folder, no manifest, or a listed file is missing (named).
        ValueError: the manifest is malformed, lacks its checksum or fails it (edited), or a listed file does not
            match its digest (edited, truncated or swapped; named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {MANIFEST} (not written by commandv, or incomplete); "
                                "re-create the folder")
    body = read_json(path)
    where = f"{str(path)!r}"
    if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{where} is not a commandv manifest; re-create the folder")
    if not isinstance(body.get("checksum"), str):
        raise ValueError(f"{where} has no checksum (edited); re-create the folder")
    files, config = body.get("files"), body.get("config")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()) \
            or not isinstance(config, dict):
        raise ValueError(f"{where} is malformed (files or config); re-create the folder")
    if _manifest_checksum(MANIFEST_KIND, config, files) != body["checksum"]:
        raise ValueError(f"{where} was edited: its configuration or file list does not match its checksum; "
                         "re-create the folder")
    for name, digest in files.items():
        target = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ValueError(f"{where} lists {name!r}, outside the folder; re-create the folder")
        if not target.is_file():
            raise FileNotFoundError(f"{str(target)!r} is missing from {str(folder)!r}; re-create the folder")
        if file_digest(target) != digest:
            raise ValueError(f"{str(target)!r} was edited, truncated or swapped: it does not match the digest in "
                             f"{MANIFEST}; re-create the folder")
    return config
