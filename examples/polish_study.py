"""Study: what the polish of ``cv.transfer`` does to the paste it starts from, recipient layer by recipient layer.

For each zoo pair, behavior and seed: ``cv.transfer`` on the behavior's first 128 training prompts (label-free,
its defaults but the seed), then ``cv.analysis.final_edit_analysis`` of the edit it applied, on 64 held-out test
prompts: the cosine and norm ratio of the polished delta against the compiled paste's it started from and against
the distillation from scratch, each edit's push against the residual, and which layers carry the behavior. Every
row names what was applied (``label``: a paste, a paste + N distillation steps, or distillation only).

    python examples/polish_study.py                      # the demo pair, 3 behaviors × 5 seeds (a few minutes)
    python examples/polish_study.py --seeds 0 --behaviors jailbreak --out /tmp/polish   # one cell

Writes ``<out>/polish_change.csv``; each cell is cached under ``<out>/cells/`` (a re-run resumes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import commandv_interp as cv
from commandv_interp import analysis, zoo
from commandv_interp.pipeline.labels import transfer_label

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("llama-6x128", "gpt2-4x96"),)  # the demo pair: cross-architecture and cross-tokenizer
TRAIN_PROMPTS = 128  # unlabeled prompts handed to cv.transfer, as in the demo
TEST_PROMPTS = 64  # held-out prompts of the analysis


def run_cell(donor_name: str, recipient_name: str, behavior: str, seed: int) -> pd.DataFrame:
    """One transfer and the analysis of its final edit, as tidy rows."""
    donor_model, recipient_model = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    adapter = zoo.load_adapter(donor_name, behavior)
    t0 = time.perf_counter()
    result = cv.transfer(donor_model, recipient_model, adapter, zoo.prompts(behavior, "train")[:TRAIN_PROMPTS],
                         seed=seed, progress=False)
    frames = analysis.final_edit_analysis(donor_model, recipient_model, adapter, result,
                                          zoo.prompts(behavior, "test")[:TEST_PROMPTS])
    meta = dict(donor=donor_name, recipient=recipient_name, behavior=behavior, seed=seed, choice=result.choice,
                label=transfer_label(result), transfer_s=time.perf_counter() - t0)
    return pd.concat([frame.assign(analysis=name, **{k: v for k, v in meta.items() if k != "label"})
                      for name, frame in frames.items()], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "polish_change", help="results folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="transfer seeds")
    parser.add_argument("--behaviors", nargs="+", default=list(zoo.BEHAVIORS), choices=list(zoo.BEHAVIORS))
    args = parser.parse_args()
    cells = args.out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    frames = []
    for donor_name, recipient_name in PAIRS:
        for behavior in args.behaviors:
            for seed in args.seeds:
                path = cells / f"{donor_name}_{recipient_name}_{behavior}_{seed}.csv"
                if not path.exists():
                    frame = run_cell(donor_name, recipient_name, behavior, seed)
                    frame.to_csv(path.with_suffix(".tmp"), index=False)
                    path.with_suffix(".tmp").replace(path)
                    print(f"{behavior} seed {seed}: {frame.label.iloc[0]} ({frame.choice.iloc[0]})", flush=True)
                frames.append(pd.read_csv(path, dtype={"layers": str}))
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out / "polish_change.csv", index=False)
    print(args.out / "polish_change.csv")


if __name__ == "__main__":
    main()
