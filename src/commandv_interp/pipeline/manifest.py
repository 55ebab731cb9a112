"""Stage 6 (pipeline): consumes a folder of saved artifacts, produces its ``manifest.json`` (every file's SHA-256, the
configuration, and a checksum over the manifest itself) and verifies a folder against it as a whole.

Verification is all-or-nothing and cannot be switched off: a folder without a manifest, a manifest without its
checksum, a file that is missing, added, edited, swapped or truncated is refused with one line naming it. Hidden
temporary files of an interrupted atomic write (``.<name>.<random>.tmp``) are not part of a folder and are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from commandv_interp.io import read_json, write_json

__all__ = ["MANIFEST", "write_manifest", "verify_manifest", "file_digest"]

MANIFEST = "manifest.json"
_KIND = "commandv.manifest"


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (POSIX paths relative to it), but the manifest and leftover temporary files."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            out.append(rel)
    return out


def _checksum(body: Mapping) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def write_manifest(folder: str | Path, of: str, config: Mapping) -> Path:
    """Write ``folder/manifest.json``: the digest of every file now in ``folder``, the folder's kind ``of``, its
    ``config``, and the manifest's own checksum. Call it last, when every other file is written."""
    folder = Path(folder)
    body = {"kind": _KIND, "of": of, "config": dict(config),
            "files": {rel: file_digest(folder / rel) for rel in _files(folder)}}
    return write_json(folder / MANIFEST, body | {"checksum": _checksum(body)})


def verify_manifest(folder: str | Path, of: str, fix: str) -> dict:
    """The manifest of ``folder`` after checking the folder against it; ``fix`` ends every refusal (what to do).

    Raises:
        ValueError: no manifest, a manifest of another kind, without its checksum or edited, or any file missing,
            added, or with another digest.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ValueError(f"{str(folder)!r} has no {MANIFEST} (a part was deleted, or it was not written by this "
                         f"commandv); {fix}")
    manifest = read_json(folder / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("kind") != _KIND or manifest.get("of") != of:
        raise ValueError(f"{str(folder / MANIFEST)!r} is not the manifest of a {of} folder; {fix}")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if not isinstance(manifest.get("checksum"), str):
        raise ValueError(f"{str(folder / MANIFEST)!r} lacks its checksum (it is mandatory); {fix}")
    if manifest["checksum"] != _checksum(body):
        raise ValueError(f"{str(folder / MANIFEST)!r} was edited: it does not match its checksum; {fix}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("config"), dict):
        raise ValueError(f"{str(folder / MANIFEST)!r} lacks its file list or configuration; {fix}")
    present = _files(folder)
    for rel in files:
        if rel not in present:
            raise ValueError(f"{str(folder / rel)!r} is missing from the folder (listed in {MANIFEST}); {fix}")
    for rel in present:
        if rel not in files:
            raise ValueError(f"{str(folder / rel)!r} is not part of this {of} folder (not in {MANIFEST}): it was "
                             f"added or copied in; remove it, or {fix}")
        if file_digest(folder / rel) != files[rel]:
            raise ValueError(f"{str(folder / rel)!r} was edited, swapped or truncated (its SHA-256 differs from the "
                             f"one in {MANIFEST}); {fix}")
    return manifest
