"""Where a benchmark's models run (``--device``, ``--dtype``) and how a stage is timed and metered there.

On CPU a stage's peak is the process's resident memory (``scaling.PeakRSS``) and ratios use CPU time (see
``realwidth.Stages``). On CUDA kernels run asynchronously: the device is synchronized before a timer stops, ratios
use wall time, and a stage's peak is ``torch.cuda.max_memory_allocated`` above the level at its start.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from scaling import PeakRSS  # this folder is on sys.path when a script here runs

__all__ = ["DTYPES", "DevicePeak", "add_device_args", "built_on", "check_device", "device_name", "synchronize"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIB = 2**20


def add_device_args(parser: argparse.ArgumentParser, device: str = "cpu", dtype: str = "float32") -> None:
    parser.add_argument("--device", default=device, help=f"torch device of the models (default {device})")
    parser.add_argument("--dtype", default=dtype, choices=sorted(DTYPES), help=f"the models' dtype (default {dtype})")


def check_device(device: str) -> torch.device:
    """The device, or a clear error when it does not exist here."""
    try:
        placed = torch.device(device)
    except RuntimeError as err:
        raise SystemExit(f"error: --device {device!r} is not a torch device ({err}); use cpu or cuda") from None
    if placed.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device!r} needs CUDA, which this machine lacks; use --device cpu "
                         "(or gpu_check.py --dry-run)")
    if placed.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {device!r}: only cpu and cuda are measured")
    return placed


def device_name(device: torch.device) -> str:
    """``cpu``, or the GPU's name (e.g. ``NVIDIA H100 80GB HBM3``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def built_on(device: torch.device) -> Iterator[None]:
    """Tensors created in the block default to ``device``: a model's random init runs there (a 3B model is
    initialized on a GPU in seconds, on a CPU in minutes)."""
    with torch.device(device):
        yield


class DevicePeak:
    """Peak memory of a stage in MiB above its start: resident memory on CPU, allocated device memory on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, float("nan")
        self._rss = PeakRSS() if device.type == "cpu" else None

    def __enter__(self) -> "DevicePeak":
        if self._rss is not None:
            self._rss.__enter__()
            return self
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self._rss is not None:
            self._rss.__exit__(*exc)
            self.mb = self._rss.mb
            return
        synchronize(self.device)
        self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / MIB
