"""io: writers that keep old data, permissions and no leftovers (a really full tmpfs where mounting is allowed, else
RLIMIT_FSIZE in a subprocess); mandatory checksums covering metadata; truncation messages; folder manifests."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_adapter

import commandv_interp as cv
from commandv_interp.io import (TMP_SUFFIX, atomic_write, read_safetensors, temp_path, tensors_checksum, write_json,
                                write_safetensors)
from commandv_interp.manifest import MANIFEST, verify_manifest, write_manifest

KIND = "test.kind"


def _artifact(path: Path, n: int = 4, value: float = 1.0) -> Path:
    return write_safetensors(path, {"x": torch.full((n,), value)}, {"kind": KIND, "model": "m"}, "thing")


def _rewrite_meta(path: Path, edit) -> Path:
    """``path`` rewritten with its metadata edited by ``edit(meta)`` and its tensors kept (checksum not updated)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["commandv"])
    tensors = load_file(str(path))
    edit(meta)
    save_file(tensors, str(path), metadata={"commandv": json.dumps(meta)})
    return path


# ---------------------------------------------------------------- checksums


def test_checksum_covers_tensors_and_metadata(tmp_path):
    path = _artifact(tmp_path / "a.safetensors")
    meta, tensors = read_safetensors(path, "thing", KIND)
    assert meta["checksum"] == tensors_checksum(tensors, meta) != tensors_checksum(tensors)


def test_edited_metadata_is_refused(tmp_path):
    path = _rewrite_meta(_artifact(tmp_path / "a.safetensors"), lambda m: m.update(model="other"))
    with pytest.raises(ValueError, match="corrupted or edited"):
        read_safetensors(path, "thing", KIND)


def test_a_deleted_checksum_key_is_refused_not_skipped(tmp_path):
    path = _rewrite_meta(_artifact(tmp_path / "a.safetensors"), lambda m: m.pop("checksum"))
    with pytest.raises(ValueError, match="has no checksum"):
        read_safetensors(path, "thing", KIND)


def test_truncated_file_names_the_missing_bytes(tmp_path):
    path = _artifact(tmp_path / "a.safetensors", n=4096)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"is truncated: tensor 'x' ends at byte 16384 of the data but the file "
                                         r"holds only 15384 data bytes") as info:
        read_safetensors(path, "thing", KIND)
    assert "needs 16384 bytes but the file holds 16384" not in str(info.value)


# ---------------------------------------------------------------- atomic writes: leftovers, permissions, errors


def test_a_killed_save_leaves_one_fixed_scratch_file_that_the_next_save_removes(tmp_path):
    target = tmp_path / "p.safetensors"
    scratch = temp_path(target)
    assert scratch.name == f".p.safetensors{TMP_SUFFIX}"
    scratch.write_bytes(b"x" * 1000)  # what a kill -9 during the write leaves
    legacy = tmp_path / ".p.safetensors.abc123.tmp"  # the random name of earlier versions
    legacy.write_bytes(b"y")
    _artifact(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


def test_adapter_scratch_folders_are_reused_and_a_half_swap_is_undone(tmp_path):
    folder = cv.save_adapter(random_adapter(8), tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (tmp_path / f".adapter{TMP_SUFFIX}").mkdir()  # a kill during the write
    os.replace(folder, tmp_path / f".adapter.old{TMP_SUFFIX}")  # a kill between the two renames
    cv.save_adapter(random_adapter(8, seed=1), tmp_path / "other")  # another target: untouched leftovers
    assert (tmp_path / f".adapter.old{TMP_SUFFIX}").is_dir()
    cv.save_adapter(random_adapter(8, seed=2), tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "other"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} != before  # the new one is in place


def test_an_overwritten_file_keeps_its_permissions(tmp_path):
    target = _artifact(tmp_path / "p.safetensors")
    os.chmod(target, 0o600)
    _artifact(target, value=2.0)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_json(tmp_path / "m.json", {"a": 1})
    os.chmod(tmp_path / "m.json", 0o640)
    write_json(tmp_path / "m.json", {"a": 2})
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o640


def test_an_overwritten_adapter_keeps_its_permissions(tmp_path):
    folder = cv.save_adapter(random_adapter(8), tmp_path / "adapter")
    for p in folder.iterdir():
        os.chmod(p, 0o600)
    cv.save_adapter(random_adapter(8, seed=1), folder)
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail] basic_ios::clear: iostream error"),
                                   OSError(28, "No space left on device")])
def test_any_failed_write_is_one_oserror_and_the_old_file_stays(tmp_path, error):
    target = tmp_path / "p.txt"
    target.write_text("old")

    def fail(path):
        path.write_text("partial")
        raise error

    with pytest.raises(OSError, match="cannot write .*p.txt.*any earlier file there is intact"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def test_safetensors_errors_become_oserror(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import safetensors.torch

    def full(tensors, filename, metadata=None):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match=r"\(no space left on the device\); free disk space"):
        _artifact(tmp_path / "p.safetensors")


# ---------------------------------------------------------------- a really full disk


def _mount_tmpfs(mount: Path) -> str | None:
    """Mount a 64 kB tmpfs at ``mount``; the reason when that is not permitted here."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    except OSError as err:
        return str(err)
    return None if done.returncode == 0 else done.stderr.decode().strip() or f"exit {done.returncode}"


@pytest.fixture(scope="module")
def mount_refused(tmp_path_factory) -> str | None:
    mount = tmp_path_factory.mktemp("probe")
    reason = _mount_tmpfs(mount)
    if reason is None:
        subprocess.run(["umount", str(mount)], check=True)
    return reason


@pytest.fixture()
def small_disk(tmp_path, mount_refused):
    """A 64 kB tmpfs (skipped where mounting is not permitted: the RLIMIT_FSIZE test runs instead)."""
    if mount_refused is not None:
        pytest.skip(f"cannot mount a tmpfs here ({mount_refused}); the RLIMIT_FSIZE test covers the writers")
    mount = tmp_path / "disk"
    mount.mkdir()
    assert _mount_tmpfs(mount) is None
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # busy: detach now, freed when released


def _fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


def test_full_disk_profile_and_adapter_writers(small_disk):
    profile_path = _artifact(small_disk / "p.safetensors", n=16)
    folder = cv.save_adapter(random_adapter(8), small_disk / "adapter")
    old_profile, old_adapter = profile_path.read_bytes(), {p.name: p.read_bytes() for p in folder.iterdir()}
    _fill(small_disk, leave=8192)
    with pytest.raises(OSError, match="no space left on the device") as info:
        _artifact(profile_path, n=16384)  # 64 kB of tensors
    assert info.value.errno == 28
    with pytest.raises(OSError, match="cannot write adapter folder .*no space left on the device"):
        cv.save_adapter(random_adapter(4096, rank=4), folder)
    assert profile_path.read_bytes() == old_profile
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old_adapter
    assert sorted(p.name for p in small_disk.iterdir()) == ["adapter", "filler", "p.safetensors"]


def test_full_disk_cli_writes_one_error_line(small_disk, tmp_path):
    from typer.testing import CliRunner

    from commandv_interp.app import cli

    adapter = cv.save_adapter(random_adapter(4096, rank=4, layers=(0,)), tmp_path / "adapter")
    _fill(small_disk, leave=4096)
    conv = tmp_path / "conv.safetensors"  # a compile needs converters: fail on the adapter's write, not before
    from test_bad_inputs_surfaces import identity_converters

    identity_converters(4096, conv)
    result = CliRunner().invoke(cli.app, ["compile", str(adapter), str(conv), "--out", str(small_disk / "native")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write adapter folder") and \
        "no space left" in lines[0], result.stderr
    assert "native" not in {p.name for p in small_disk.iterdir()}


_FSIZE_SCRIPT = """
import resource, signal, sys, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from commandv_interp.io import write_safetensors
try:
    write_safetensors(sys.argv[1], {"x": torch.zeros(16384)}, {"kind": "k"}, "thing")
except OSError as err:
    print("OSError", err)
"""


def test_file_size_limit_without_mount(tmp_path, mount_refused):
    """Where tmpfs cannot be mounted, a write past RLIMIT_FSIZE fails the same way (EFBIG)."""
    if mount_refused is None:
        pytest.skip("a tmpfs can be mounted here: the full-disk tests above ran on a real full filesystem")
    target = tmp_path / "p.safetensors"
    _artifact(target)
    old = target.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(Path(cv.__file__).parents[1]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(target)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.stdout.startswith("OSError") and "cannot write" in done.stdout, (done.stdout, done.stderr)
    assert target.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


# ---------------------------------------------------------------- folder manifests


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "transfer.json").write_text('{"alpha": 1.0}')
    (root / "adapter").mkdir()
    (root / "adapter" / "w.bin").write_bytes(b"\1" * 100)
    (root / "candidates.csv").write_text("a,b\n1,2\n3,4\n")
    write_manifest(root, {"alpha": 1.0, "choice": "interface/depth"})
    return root


def test_manifest_round_trips(folder):
    assert verify_manifest(folder) == {"alpha": 1.0, "choice": "interface/depth"}
    assert set(json.loads((folder / MANIFEST).read_text())["files"]) == {"transfer.json", "adapter/w.bin",
                                                                         "candidates.csv"}


@pytest.mark.parametrize("damage, error, match", [
    (lambda f: (f / "candidates.csv").write_text("a,b\n1,2\n"), ValueError, "candidates.csv' was edited, truncated"),
    (lambda f: (f / "adapter" / "w.bin").unlink(), FileNotFoundError, "w.bin' is missing"),
    (lambda f: (f / "transfer.json").write_text('{"alpha": 50.0}'), ValueError, "transfer.json' was edited"),
    (lambda f: _edit_manifest(f, lambda m: m["config"].update(alpha=50.0)), ValueError, "was edited: its configuration"),
    (lambda f: _edit_manifest(f, lambda m: m.pop("checksum")), ValueError, "has no checksum"),
    (lambda f: _edit_manifest(f, lambda m: m["files"].update({"x": m["files"]["transfer.json"]})), ValueError,
     "was edited"),
    (lambda f: (f / MANIFEST).unlink(), FileNotFoundError, "has no manifest.json"),
    (lambda f: shutil.copy(f / "transfer.json", f / "candidates.csv"), ValueError, "swapped"),
])
def test_manifest_refuses_every_damage(folder, damage, error, match):
    damage(folder)
    with pytest.raises(error, match=match):
        verify_manifest(folder)


def _edit_manifest(folder: Path, edit) -> None:
    body = json.loads((folder / MANIFEST).read_text())
    edit(body)
    (folder / MANIFEST).write_text(json.dumps(body))
