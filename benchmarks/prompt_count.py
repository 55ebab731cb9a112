"""``cv.transfer`` with more (or other) unlabeled prompts than the benchmarks' 128: the main zoo world's cells of a
behavior at transfer seeds 0-4, scored with labels afterwards on 160 held-out test prompts, against the bar of
``benchmarks/label_free.py``. One CSV row per (cell, seed).

    python benchmarks/prompt_count.py --prompts 320 --out runs.csv                   # the first 320 training prompts
    python benchmarks/prompt_count.py --prompts 320 --subset 128 --out runs.csv      # a seeded 128 of those 320
    python benchmarks/prompt_count.py --prompts 320 --uncapped --out runs.csv        # scoring split without its cap
    python benchmarks/prompt_count.py --prompts 128 --no-scale-search --out runs.csv # without the scale search
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd
import torch

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.pipeline import split
from commandv_interp.zoo.scoring import BEHAVIOR_RATES


def bar(rates: dict, ft: dict, behavior: str) -> bool:
    target, side = BEHAVIOR_RATES[behavior]
    return bool(rates[target] >= 0.9 * ft[target] - 1e-9
                and (side != "false_refusal" or rates[side] <= ft[side] + 0.02 + 1e-9)
                and (side == "false_refusal" or rates[side] >= 0.9 * ft[side] - 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=320, help="the first N training prompts of each behavior")
    parser.add_argument("--subset", type=int, default=0, help="use a seeded random subset of this many of them")
    parser.add_argument("--uncapped", action="store_true", help="lift the scoring split's cap (MAX_SCORING)")
    parser.add_argument("--no-scale-search", action="store_true", help="cv.transfer(..., scale_search=False)")
    parser.add_argument("--behaviors", default="refusal")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.uncapped:
        split.MAX_SCORING.update({True: 10**9, False: 10**9})
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    manifest, rows = zoo.manifest(), []
    for (d, r), b in itertools.product(itertools.permutations(zoo.list_models(), 2), args.behaviors.split(",")):
        donor, recipient, adapter = zoo.load_model(d), zoo.load_model(r), zoo.load_adapter(d, b)
        prompts = zoo.prompts(b, "train")[:args.prompts]
        if args.subset:
            pick = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))[:args.subset]
            prompts = [prompts[i] for i in sorted(pick.tolist())]
        ft = {x["metric"]: x["value"] for x in manifest["behavior_table"]
              if (x["model"], x["behavior"], x["condition"]) == (r, b, "adapter")}
        ft_flops = manifest["models"][r]["adapters"][b]["training"]["flops"]
        target, side = BEHAVIOR_RATES[b]
        for seed in seeds:
            t0 = time.perf_counter()
            result = cv.transfer(donor, recipient, adapter, prompts, seed=seed, progress=False,
                                 scale_search=not args.no_scale_search)
            with result.paste():
                rates = zoo.evaluate(recipient, b, limit=160)
            rows.append({"prompts": len(prompts), "uncapped": args.uncapped, "scale_search": not args.no_scale_search,
                         "donor": d, "recipient": r,
                         "behavior": b, "seed": seed, "choice": result.choice, "target": rates[target],
                         "side": rates[side], "meets_bar": bar(rates, ft, b), "flops_ratio": result.flops / ft_flops,
                         "wall_s": time.perf_counter() - t0})
            print(rows[-1], flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
