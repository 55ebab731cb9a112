"""Build (or load from the cache) generated worlds and tabulate them: per world, its behavior, donor and recipient
(family, depth × width, tokenizer), the plans the build set aside (unaffordable, or failing the build-time check on
train prompts), build cost (CPU seconds on one thread, wall seconds) and the behavior table on
the 160 held-out test prompts (each model without cue, with cue, with its own adapter). Writes
``<out>/generated_worlds_<seeds>.md`` and ``.csv``.

    python benchmarks/generated_worlds.py                # the dev seeds
    python benchmarks/generated_worlds.py --seeds test   # the test seeds
    python benchmarks/generated_worlds.py --seeds 0,8 --cached-only
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from commandv_interp.zoo import generated

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"


def world_row(seed: int, cached_only: bool) -> dict | None:
    if cached_only and not (generated.world_folder(seed) / "world.json").is_file():
        return None
    w = generated.build_world(seed)
    donor, recipient = w.plans
    target, side = w.rates
    rate = {(r["model"], r["condition"], r["metric"]): r["value"] for r in w.record["behavior_table"]}
    row = {"seed": seed, "behavior": w.behavior, "pair": donor.pair, "donor": f"{donor.name} ({donor.tokenizer})",
           "recipient": f"{recipient.name} ({recipient.tokenizer})", "target": target, "side": side,
           "build_cpu_s": w.record.get("build_cpu_s", float("nan")), "build_wall_s": w.record["build_s"]}
    for role in ("donor", "recipient"):
        for condition in ("base", "cue", "adapter"):
            row[f"{role}_{condition}"] = f"{rate[(role, condition, target)]:.2f} / {rate[(role, condition, side)]:.2f}"
    row["adapter_ok"] = rate[("donor", "adapter", target)] >= 0.9
    row["finetune_ok"] = rate[("recipient", "adapter", target)] >= 0.9
    row["set_aside"] = _set_aside(w.record)
    row["checks_passed"] = all(w.record[r].get("check", {}).get("passed", False) for r in ("donor", "recipient"))
    return row


def _set_aside(record: dict) -> str:
    """The plans the build replaced, per role and reason (e.g. ``donor 1 cost, recipient 1 check``)."""
    parts = []
    for role in ("donor", "recipient"):
        whys = [s["why"] for s in record[role].get("set_aside", [])]
        parts += [f"{role} {whys.count(why)} {why}" for why in ("cost", "check") if why in whys]
    return ", ".join(parts) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="dev", help="dev, test, or world seeds like 0,8")
    parser.add_argument("--cached-only", action="store_true", help="tabulate only worlds already built")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    named = {"dev": generated.DEV_SEEDS, "test": generated.TEST_SEEDS}
    seeds = named.get(args.seeds) or [int(s) for s in args.seeds.split(",")]
    rows = [r for r in (world_row(s, args.cached_only) for s in seeds) if r is not None]
    table = pd.DataFrame(rows)
    stem = f"generated_worlds_{args.seeds.replace(',', '-')}"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{stem}.csv", index=False)
    cols = ["seed", "behavior", "pair", "donor", "recipient", "set_aside", "build_cpu_s", "donor_cue",
            "donor_adapter", "recipient_base", "recipient_adapter"]
    lines = ["| world | behavior (target / side) | pair | donor | recipient | plans set aside | build CPU s | "
             "donor + cue | donor + adapter | recipient | recipient finetune |", "|" + "---|" * len(cols)]
    for r in table.itertuples():
        lines.append(f"| {r.seed} | {r.behavior} ({r.target} / {r.side}) | {r.pair} | {r.donor} | {r.recipient} | "
                     f"{r.set_aside}{'' if r.checks_passed else ' (a check failed)'} | {r.build_cpu_s:.0f} | "
                     f"{r.donor_cue} | {r.donor_adapter}{'' if r.adapter_ok else ' ✗'} | {r.recipient_base} | "
                     f"{r.recipient_adapter}{'' if r.finetune_ok else ' ✗'} |")
    lines += ["", f"Build CPU seconds (one thread; pretraining, adapters and checks, not the behavior table): median "
              f"{table.build_cpu_s.median():.0f}, max {table.build_cpu_s.max():.0f}; within 180: "
              f"{int((table.build_cpu_s <= 180).sum())} of {len(table)}. ✗: an adapter under 0.9 on the test prompts."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
