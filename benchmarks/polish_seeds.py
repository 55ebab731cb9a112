"""The adaptive polish over seeds: ``cv.transfer`` on zoo cells for seeds 0-4, scored with labels only afterwards
(refusal / false refusal or the behavior's rates on held-out test prompts), each run checked against the bar (the
recipient finetune's target rate x 0.9; false refusal within the finetune's + 0.02; CoT accuracy >= 0.9 x the
finetune's). ``--polish-steps`` and ``--polish-budget`` pass those ``cv.transfer`` keywords. Writes one CSV row
per (cell, seed) to ``--out``.

    python benchmarks/polish_seeds.py --behaviors refusal --seeds 0-4 --out runs.csv
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

TRAIN_PROMPTS = 128  # as benchmarks/label_free.py: the adapter's first training inputs


def finetune(recipient: str, behavior: str, world: str) -> dict:
    manifest = zoo.manifest(world=world)
    rates = {r["metric"]: r["value"] for r in manifest["behavior_table"]
             if (r["model"], r["behavior"], r["condition"]) == (recipient, behavior, "adapter")}
    return {"rates": rates, "flops": manifest["models"][recipient]["adapters"][behavior]["training"]["flops"]}


def meets(rates: dict, ft: dict, behavior: str) -> bool:
    target, side = BEHAVIOR_RATES[behavior]
    return bool(rates[target] >= 0.9 * ft[target] - 1e-9
                and (side != "false_refusal" or rates[side] <= ft[side] + 0.02)
                and (behavior != "cot" or rates[side] >= 0.9 * ft[side] - 1e-9))


def seeds_of(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="main")
    parser.add_argument("--behaviors", default="refusal")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--pairs", default="", help="comma-separated donor:recipient pairs (default: all)")
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--polish-steps", type=int, default=None)
    parser.add_argument("--polish-budget", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = list(zoo.list_models(world=args.world))
    pairs = ([tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs
             else list(itertools.permutations(names, 2)))
    extra = {} if args.polish_steps is None else {"polish_steps": args.polish_steps}
    extra |= {} if args.polish_budget is None else {"polish_budget": args.polish_budget}
    rows = []
    for (d, r), b in itertools.product(pairs, args.behaviors.split(",")):
        donor, recipient = zoo.load_model(d, world=args.world), zoo.load_model(r, world=args.world)
        adapter = zoo.load_adapter(d, b, world=args.world)
        prompts = zoo.prompts(b, "train", world=args.world)[:TRAIN_PROMPTS]
        ft = finetune(r, b, args.world)
        target, side = BEHAVIOR_RATES[b]
        for seed in seeds_of(args.seeds):
            t0 = time.perf_counter()
            result = cv.transfer(donor, recipient, adapter, prompts, seed=seed, progress=False, **extra)
            wall = time.perf_counter() - t0
            with result.paste():
                rates = zoo.evaluate(recipient, b, limit=args.limit, world=args.world)
            rows.append({"donor": d, "recipient": r, "behavior": b, "seed": seed, "choice": result.choice,
                         "target": rates[target], "side": rates[side], "ft_target": ft["rates"][target],
                         "ft_side": ft["rates"][side], "meets_bar": meets(rates, ft["rates"], b),
                         "flops_ratio": result.flops / ft["flops"], "wall_s": wall})
            print(rows[-1], flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
