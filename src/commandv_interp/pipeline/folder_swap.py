"""Consumes a folder path and a function that writes a folder's contents, produces that folder replaced as a whole:
the contents are written into a staging folder beside it and swapped in, so that a reader sees the earlier folder or
the new one, never a mix, and a save killed midway leaves the earlier folder (or its leftovers, which the next save of
the same folder clears and puts back)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from commandv_interp.io import dir_mode

__all__ = ["replace_folder"]


def replace_folder(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging)`` on a fresh staging folder beside ``folder`` and put it in ``folder``'s place (an earlier
    ``folder`` is moved aside first and removed last). Returns ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".saving", dir=folder.parent))
    try:
        write(staging)
        os.chmod(staging, dir_mode())
        _swap_into(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def _clear_leftovers(folder: Path) -> None:
    """Remove what a save of ``folder`` killed midway left beside it: a ``.<name>.*.saving`` staging folder, and a
    ``.<name>.*.old`` holding the earlier folder, which is first put back when ``folder`` itself is gone."""
    name = glob.escape(folder.name) + "." + "?" * 8  # mkdtemp's 8 random characters: not another folder's
    for old in sorted(folder.parent.glob(f".{name}.old")):
        if not folder.exists() and (old / "t").is_dir():
            os.replace(old / "t", folder)
        shutil.rmtree(old)
    for staging in folder.parent.glob(f".{name}.saving"):
        shutil.rmtree(staging)


def _swap_into(staging: Path, folder: Path) -> None:
    """Put ``staging`` in ``folder``'s place; an earlier folder is moved aside first and removed last."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, old / "t")
    os.replace(staging, folder)
    if old is not None:
        shutil.rmtree(old)
