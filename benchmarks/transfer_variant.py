"""An ablation of ``cv.transfer``: the label-free transfer with any :class:`~commandv_interp.pipeline.TransferConfig`
setting changed, on a zoo world's cells or on generated worlds, at each transfer seed, scored with labels only
afterwards on held-out test prompts against the bar of ``benchmarks/label_free.py`` (the same cells, prompts and
bar; only the transfer runs, not its baselines). Writes one CSV row per (cell, seed) and prints the share of runs
meeting the bar and the median FLOPs.

    python benchmarks/transfer_variant.py --world main --behaviors refusal --config '{"polish_lrs": [0.016]}' \\
        --out runs.csv
    python benchmarks/transfer_variant.py --world generated --world-seeds dev --config '{"lr_fallback": false}' \\
        --out runs.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

import label_free as lf
from commandv_interp import zoo
from commandv_interp.pipeline import TransferConfig, run_transfer
from commandv_interp.zoo import generated


def cells(world: str, world_seeds: str, behaviors: str) -> list:
    """Loaders of the cells to run (a zoo world's, restricted to ``behaviors``; or the generated worlds named)."""
    if world == "generated":
        seeds = {"dev": generated.DEV_SEEDS, "test": generated.TEST_SEEDS}.get(world_seeds) or lf.parse_seeds(
            world_seeds)
        return [lambda s=s: lf.load_generated_cell(s) for s in seeds]
    wanted = behaviors.split(",") if behaviors else None
    return [lambda c=c: lf.load_zoo_cell(*c, world) for c in lf.zoo_cells(world) if wanted is None or c[2] in wanted]


def _fail(message: str) -> None:
    """Exit 2 with one ``error:`` line (a bad command line)."""
    print(f"error: {message.splitlines()[0]}", file=sys.stderr)
    raise SystemExit(2)


def config_of(text: str, seed: int) -> TransferConfig:
    """The ``--config`` JSON object as a config at ``seed`` (lists become tuples; unknown keys are refused)."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        _fail(f"--config {text!r} is not JSON ({err.msg})")
    if not isinstance(values, dict) or "seed" in values:
        _fail(f"--config must be a JSON object of TransferConfig settings other than seed, got {text!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return TransferConfig.from_dict(TransferConfig(seed=seed).to_dict() | values)
    except (TypeError, ValueError) as err:
        _fail(f"--config: {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="main", choices=sorted(zoo.WORLDS) + ["generated"])
    parser.add_argument("--world-seeds", default="dev", help="generated worlds: dev, test, or seeds like 0-8")
    parser.add_argument("--behaviors", default="", help="a zoo world's behaviors, comma-separated (default: all)")
    parser.add_argument("--seeds", default="0-4", help="transfer seeds, e.g. 0-4")
    parser.add_argument("--limit", type=int, default=160, help="held-out test prompts per run")
    parser.add_argument("--config", default="{}", help="TransferConfig settings to change, as a JSON object")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    args = parser.parse_args()
    seeds = lf.parse_seeds(args.seeds)
    config_of(args.config, 0)  # a bad --config fails before any model is loaded
    rows = []
    for load in tqdm(cells(args.world, args.world_seeds, args.behaviors), desc="cells"):
        cell = load()
        for seed in seeds:
            t0 = time.perf_counter()
            result = run_transfer(cell.donor, cell.recipient, cell.adapter, cell.prompts, config_of(args.config, seed),
                                  progress=False)
            wall = time.perf_counter() - t0
            with result.paste():
                rates = cell.evaluate(cell.recipient, args.limit)
            rows.append({"donor": cell.donor_name, "recipient": cell.recipient_name, "behavior": cell.behavior,
                         "seed": seed, "choice": result.choice, "target": rates[cell.target],
                         "side": rates[cell.side], "meets_bar": lf.meets(cell, rates),
                         "nothing_lost": lf.nothing_lost(cell, rates), "flops_ratio": result.flops / cell.finetune[
                             "flops"], "wall_s": wall, "config": args.config})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    print(f"{int(table.meets_bar.sum())} of {len(table)} runs meet the bar; median FLOPs "
          f"{table.flops_ratio.median():.1%} of the finetune's; wrote {args.out}")


if __name__ == "__main__":
    main()
