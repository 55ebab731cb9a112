"""Consumes prompt files, produces prompt lists and their fingerprints.

Formats: plain text (one prompt per non-empty line) and JSON (a list of strings, or a list of
objects with a ``prompt``, ``instruction``, ``input`` or ``text`` field; BIG-Bench-style files with
an ``examples`` list are accepted too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_prompts", "prompts_fingerprint"]

_FIELDS = ("prompt", "instruction", "input", "text")


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """SHA-256 (first 16 hex digits) of the exact, ordered prompt list.

    >>> prompts_fingerprint(["a", "b"]) != prompts_fingerprint(["b", "a"])
    True
    """
    h = hashlib.sha256()
    for p in prompts:
        data = p.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Read prompts from a ``.txt`` or ``.json``/``.jsonl`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no prompts or an entry has none of the known fields.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"prompt file {str(path)!r} is a folder, not a file; pass the prompts file")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); save it as "
                         "UTF-8") from None
    if path.suffix == ".json":
        items = _json(text, path)
        if isinstance(items, dict) and "examples" in items:
            items = items["examples"]
    elif path.suffix == ".jsonl":
        items = [_json(line, path, i + 1) for i, line in enumerate(text.splitlines()) if line.strip()]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(items, list):
        raise ValueError(f"{str(path)!r}: expected a JSON list of prompts, got {type(items).__name__}")
    prompts = [_prompt_of(item, path, i) for i, item in enumerate(items)]
    if not prompts:
        raise ValueError(f"{str(path)!r} holds no prompts; write one prompt per line")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    return prompts[:limit] if limit is not None else prompts


def _json(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {line}" if line is not None else f"line {err.lineno}"
        raise ValueError(f"prompt file {str(path)!r} {where} is not valid JSON ({err.msg}); fix the file") from None


def _prompt_of(item: object, path: Path, index: int) -> str:
    if isinstance(item, str) and item.strip():
        return item
    if isinstance(item, str):
        raise ValueError(f"{str(path)!r} entry {index} is an empty prompt; remove it")
    if isinstance(item, dict):
        for field in _FIELDS:
            if isinstance(item.get(field), str) and item[field].strip():
                return item[field]
    raise ValueError(
        f"{str(path)!r} entry {index} has no prompt: expected a string or an object with one of {list(_FIELDS)!r}"
    )
