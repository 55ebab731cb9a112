"""Shared plumbing of the figure scripts: command line, running a study file on the zoo (cached), the reference
rates, and writing PNG + PDF + CSV with a one-line caption. No library logic: everything here calls the public API.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from commandv_interp import plotting, zoo
from commandv_interp.analysis.study import Study
from commandv_interp.app.sweep import run_zoo_study
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def parser(doc: str, study: str) -> argparse.ArgumentParser:
    """``--study`` (default ``examples/<study>.toml``), ``--out`` (default docs/figures), ``--cache``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, default=ROOT / "examples" / f"{study}.toml", help="study file (TOML)")
    p.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG, PDF and CSV")
    p.add_argument("--cache", type=Path, default=None, help="study results and cache (default results/<study name>)")
    return p


def runs_parser(doc: str, runs: tuple[str, ...], metavar: str, help: str) -> argparse.ArgumentParser:
    """The command line of a script that reads runs rather than a study file: ``--runs`` (default ``runs``) and
    ``--out`` (default docs/figures)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(runs), metavar=metavar, help=help)
    p.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG, PDF and CSV")
    return p


def runs_paths(specs: list[str], hint: str) -> list[tuple[str, Path]]:
    """``NAME=CSV`` specs of ``--runs`` as (name, path) pairs (a relative path is under docs/figures); exits with one
    ``error:`` line naming a spec without ``=`` or without its table, and ``hint`` (how to make it)."""
    runs = []
    for spec in specs:
        name, sep, csv = spec.partition("=")
        path = Path(csv) if Path(csv).is_absolute() else FIGURES / csv
        if not sep or not path.is_file():
            raise SystemExit(f"error: --runs {spec!r}: expected WORLD=CSV with an existing table ({hint})")
        runs.append((name, path))
    return runs


LABEL_FREE_RUNS = ("main zoo world=label_free_seeds0-4.csv", "second zoo world=label_free_heldout_seeds0-4.csv",
                   "generated dev worlds=label_free_generated_dev_seeds0-4.csv",
                   "generated test worlds=label_free_generated_test_seeds0-4.csv")
"""The label-free benchmark's tables over seeds 0–4 on every world (``benchmarks/label_free.py --seeds 0-4``)."""


def label_free_runs(doc: str) -> argparse.Namespace:
    """The command line of a figure that reads ``benchmarks/label_free.py``'s tables: ``args.runs`` as (world, path)
    pairs (default :data:`LABEL_FREE_RUNS`) and ``args.out``."""
    args = runs_parser(doc, LABEL_FREE_RUNS, "WORLD=CSV",
                       "world names and label_free tables (relative paths: under docs/figures)").parse_args()
    args.runs = runs_paths(args.runs, "run benchmarks/label_free.py --seeds 0-4 first")
    return args


def world_ticks(ax, worlds: list[str]) -> None:
    """World names as two-line x tick labels at 0, 1, …"""
    ax.set_xticks(np.arange(len(worlds)))
    ax.set_xticklabels([w.replace(" worlds", "\nworlds").replace(" world", "\nworld") for w in worlds], fontsize=8)


def seed(value: int = 0) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def run(args: argparse.Namespace) -> tuple[Study, pd.DataFrame]:
    """Run (or resume from the cache) the study file; rows gain ``pair`` ("donor → recipient")."""
    study = Study.from_toml(args.study)
    seed(study.seed)
    cache = args.cache or ROOT / "results" / study.name
    frame = run_zoo_study(args.study, cache, progress=False)
    return study, frame.assign(pair=frame.donor + " → " + frame.recipient)


def first_behavior(doc: str, study_name: str) -> tuple[argparse.Namespace, Study, str, pd.DataFrame, float]:
    """The common start of a figure script: parse the command line, run the study, keep its first behavior's rows.

    Returns ``(args, study, behavior, frame, started)`` (``started``: the wall clock before anything ran)."""
    started = time.perf_counter()
    args = parser(doc, study_name).parse_args()
    study, frame = run(args)
    behavior = study.behaviors[0]
    return args, study, behavior, frame[frame.behavior == behavior].copy(), started


def rates(behavior: str) -> list[str]:
    """The behavior's target rate and its side effect (``zoo.scoring.BEHAVIOR_RATES``)."""
    return list(BEHAVIOR_RATES[behavior])


def references(frame: pd.DataFrame) -> pd.DataFrame:
    """Recipient base, donor + adapter and recipient finetune rates for each pair of ``frame`` (column ``pair``)."""
    table = pd.DataFrame(zoo.manifest()["behavior_table"])
    parts = [plotting.reference_rates(table, d, r, b).assign(pair=f"{d} → {r}", behavior=b)
             for d, r, b in sorted(set(zip(frame.donor, frame.recipient, frame.behavior)))]
    return pd.concat(parts, ignore_index=True)


def save(fig, frame: pd.DataFrame, out: Path, stem: str, caption: str, started: float) -> None:
    """Write ``<stem>.png``, ``.pdf`` and ``.csv`` under ``out`` and print the caption."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"{stem}.csv", index=False)
    paths = plotting.save_figure(fig, out / stem)
    plt.close(fig)
    print("\n".join(str(p) for p in paths + [out / f"{stem}.csv"]))
    print(f"caption: {caption}")
    print(f"({time.perf_counter() - started:.0f} s)")


def at(frame: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    """Rows of one metric matching ``where`` (column = value)."""
    mask = frame.metric == metric
    for column, value in where.items():
        mask &= frame[column] == value
    return frame[mask]
