"""Benchmark: how profiling and deriving converters grow with the number of prompts N and the width d.

For each grid cell (d, N) a random Llama-style donor (3 blocks) and recipient (2 blocks), both ``d`` wide with an
MLP of width ``2d``, are built offline (no downloads). The cell then times:

- ``profile``: ``cv.profile`` of the donor and of the recipient over N random word prompts (4–12 words, batch 32);
- ``derive``: ``cv.match_layers(method="depth")`` + ``cv.fit_converters(method=--method)`` (3 layer pairs).

It reports the stored converter bytes next to the dense ``d × d`` equivalent: ``fit_converters`` keeps a converter
factored (``W = left @ right``, rank k ≤ N) when k < d, which stores fewer bytes only when k < d/2.

The grid is a cross, not a full product: N sweeps at fixed d, d sweeps at fixed N. Growth exponents ``k`` of
``metric ∝ N^k`` and ``metric ∝ d^k`` are least-squares slopes in log-log space (``numpy.polyfit``).

Peak memory: each cell runs in a fresh forked process, so memory freed by earlier cells cannot hide its peak.
A background thread samples the resident set size from ``/proc/self/statm`` every millisecond during a phase; a
phase's peak is the highest sample minus the RSS at the start of the phase, after ``gc.collect()`` and glibc's
``malloc_trim(0)`` have returned freed memory (Linux only). ``tracemalloc`` is not used because it does not see
torch's tensor allocations; ``cell_maxrss_mb`` is ``resource.getrusage`` ``ru_maxrss`` of the whole cell process
(model building included), as a cross-check.

Run (about 3.5 minutes by default with one thread, under a minute with ``--quick``)::

    HF_HUB_OFFLINE=1 python benchmarks/scaling.py [--quick] [--method ridge] [--threads 1] [--csv scaling.csv]
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import multiprocessing
import os
import random
import resource
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import commandv_interp as cv  # noqa: E402
from commandv_interp.converters import CONVERTER_METHODS  # noqa: E402
from commandv_interp.zoo.tokenization import SPECIALS, word_tokenizer  # noqa: E402

DONOR_LAYERS, RECIPIENT_LAYERS = 3, 2
GRIDS = {  # (N values at fixed d, fixed d, d values at fixed N, fixed N)
    "default": ((256, 512, 1024, 2048, 4096), 512, (128, 256, 512, 1024), 256),
    "quick": ((128, 256, 512), 128, (64, 128, 256), 64),
}
MB = 2**20


def random_prompts(tokenizer, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w not in SPECIALS)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def random_llama(tokenizer, n_layers: int, d_model: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)).eval()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so a phase cannot reuse an earlier phase's
    freed memory unseen by RSS; a no-op where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak resident set size above the level at entry, sampled by a thread (``.mb``)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        _release_free_heap()
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.start) / MB


def converter_bytes(converters: cv.Converters) -> int:
    parts = [getattr(conv, name) for pair in converters for conv in (pair.to_donor, pair.to_recipient)
             for name in ("left", "right", "bias")]
    return sum(t.numel() * t.element_size() for t in parts if t is not None)


def run_cell(d_model: int, n_prompts: int, method: str, threads: int) -> dict:
    """Build the two models, then time and measure profiling and deriving (runs in its own process)."""
    torch.set_num_threads(threads)
    tokenizer = word_tokenizer()
    donor = cv.open_model(random_llama(tokenizer, DONOR_LAYERS, d_model, seed=1), tokenizer=tokenizer, name="donor")
    recipient = cv.open_model(random_llama(tokenizer, RECIPIENT_LAYERS, d_model, seed=2), tokenizer=tokenizer,
                              name="recipient")
    prompts = random_prompts(tokenizer, n_prompts, seed=0)
    with PeakRSS() as profile_mem:
        start = time.perf_counter()
        p_donor = cv.profile(donor, prompts, batch_size=32, progress=False)
        p_recipient = cv.profile(recipient, prompts, batch_size=32, progress=False)
        profile_s = time.perf_counter() - start
    with PeakRSS() as derive_mem:
        start = time.perf_counter()
        layer_map = cv.match_layers(p_donor, p_recipient, method="depth")
        converters = cv.fit_converters(p_donor, p_recipient, layer_map, method=method)
        derive_s = time.perf_counter() - start
    stored = converter_bytes(converters)
    dtype_bytes = converters.pairs[0].to_donor.left.element_size()
    dense = len(converters) * 2 * d_model * d_model * dtype_bytes
    return {"d": d_model, "N": n_prompts, "profile_s": profile_s, "derive_s": derive_s,
            "profile_peak_mb": profile_mem.mb, "derive_peak_mb": derive_mem.mb, "converters_mb": stored / MB,
            "dense_mb": dense / MB, "factored": any(c.right is not None for p in converters
                                                    for c in (p.to_donor, p.to_recipient)),
            "cell_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # ru_maxrss is in KiB


def grid_cells(grid: str) -> list[tuple[int, int, str]]:
    """(d, N, sweep) cells: the N sweep at fixed d, then the d sweep at fixed N (the shared cell once, in both)."""
    ns, d_fixed, ds, n_fixed = GRIDS[grid]
    return [(d_fixed, n, "N") for n in ns] + [(d, n_fixed, "d") for d in ds]


def growth_exponents(rows: list[dict], sweep: str, metrics: tuple[str, ...]) -> dict[str, float]:
    """Slope of log(metric) against log(sweep variable) over the rows of one sweep (positive values only)."""
    out = {}
    for metric in metrics:
        pts = [(r[sweep], r[metric]) for r in rows if sweep in r["sweeps"] and r[metric] > 0]
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[metric] = float(np.polyfit(x, y, 1)[0])
    return out


COLUMNS = ("d", "N", "profile_s", "derive_s", "profile_peak_mb", "derive_peak_mb", "converters_mb", "dense_mb",
           "factored", "cell_maxrss_mb")


def print_table(rows: list[dict]) -> None:
    print("\n" + " ".join(f"{c:>15}" for c in COLUMNS))
    for r in rows:
        cells = [f"{r[c]:>15.3f}" if isinstance(r[c], float) else f"{str(r[c]):>15}" for c in COLUMNS]
        print(" ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (about a minute)")
    parser.add_argument("--method", default="ridge", choices=CONVERTER_METHODS, help="fit_converters method")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per cell (default 1: two OpenMP threads on a shared 2-core machine spin "
                             "against each other and ran 20x slower in our runs)")
    parser.add_argument("--csv", default=None, help="write one row per cell to this CSV file")
    args = parser.parse_args()
    grid = "quick" if args.quick else "default"
    ns, d_fixed, ds, n_fixed = GRIDS[grid]
    print(f"grid {grid}: N in {ns} at d={d_fixed}; d in {ds} at N={n_fixed}; method={args.method}, "
          f"threads={args.threads}, donor {DONOR_LAYERS} blocks, recipient {RECIPIENT_LAYERS} blocks")

    rows: dict[tuple[int, int], dict] = {}
    # fork: the parent has only imported torch (no threads, no tokenizer use), so each cell starts from a clean heap
    context = multiprocessing.get_context("fork")
    with context.Pool(processes=1, maxtasksperchild=1) as pool:
        for d_model, n_prompts, sweep in grid_cells(grid):
            if (d_model, n_prompts) in rows:
                rows[(d_model, n_prompts)]["sweeps"] += sweep
                continue
            start = time.perf_counter()
            row = pool.apply(run_cell, (d_model, n_prompts, args.method, args.threads))
            rows[(d_model, n_prompts)] = row | {"sweeps": sweep}
            print(f"  d={d_model:<5} N={n_prompts:<5} profile {row['profile_s']:7.2f} s  "
                  f"derive {row['derive_s']:7.2f} s  (cell {time.perf_counter() - start:.0f} s)", flush=True)

    table = sorted(rows.values(), key=lambda r: (r["d"], r["N"]))
    print_table(table)
    metrics = ("profile_s", "derive_s", "profile_peak_mb", "derive_peak_mb", "converters_mb")
    for sweep, fixed in (("N", f"d={d_fixed}"), ("d", f"N={n_fixed}")):
        exps = growth_exponents(table, sweep, metrics)
        print(f"\ngrowth exponent k (metric ∝ {sweep}^k) at {fixed}: "
              + ", ".join(f"{m} {k:.2f}" for m, k in exps.items()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "sweeps", "method", "threads"])
            writer.writeheader()
            writer.writerows(r | {"method": args.method, "threads": args.threads} for r in table)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
