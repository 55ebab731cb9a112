"""The generated worlds' donor edits: per world, the donor's rates on the held-out test prompts unedited, under its
NodiReFT adapter, its LoRA and its steering vector (``zoo.generated.edits``; each built into the world folder on
first use), and whether each edit carries the behavior: a target rate ≥ 0.9 × the ReFT adapter's and, in refusal
worlds, false refusal within +0.02 of the adapter's. Only worlds already built are tabulated (this never builds a
world). Writes ``<out>/generated_edits_<seeds>.md`` and ``.csv`` (tidy: world, edit, metric, value).

    python benchmarks/generated_edits.py                # the dev seeds
    python benchmarks/generated_edits.py --seeds test   # the test seeds
    python benchmarks/generated_edits.py --seeds 0,3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from commandv_interp.zoo import generated
from commandv_interp.zoo.generated.edits import edit_record
from commandv_interp.zoo.generated.world import load_world

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
EDITS = ("base", "reft", "lora", "steering")
SIDE_SLACK = 0.02


def carries(rates: dict, reft: dict, target: str, side: str) -> bool:
    """The edit reaches the behavior: ≥ 0.9 × the ReFT adapter's target rate, false refusal within +0.02."""
    if rates[target] < 0.9 * reft[target] - 1e-9:
        return False
    return side != "false_refusal" or rates[side] <= reft[side] + SIDE_SLACK + 1e-9


def world_rows(seed: int) -> list[dict]:
    """Tidy rows of one built world: per edit, its test rates, whether it carries, its build record."""
    w = load_world(generated.world_folder(seed))
    target, side = w.rates
    records = {kind: edit_record(w, kind, progress=True) for kind in ("lora", "steering")}
    rates = records["lora"]["test_rates"] | {"steering": records["steering"]["test_rates"]["steering"]}
    donor = w.plans[0]
    rows = []
    for edit in EDITS:
        info = {"seed": seed, "behavior": w.behavior, "donor": f"{donor.name} ({donor.tokenizer})", "edit": edit,
                "target": target, "side": side}
        if edit in records:
            info |= {"carries": carries(rates[edit], rates["reft"], target, side),
                     "build_s": records[edit]["build_s"], "test_prompts": records[edit]["test_prompts"]}
        if edit == "steering":
            info |= {"layer": records[edit]["training"]["layer"], "scale": records[edit]["training"]["scale"]}
        rows += [info | {"metric": k, "value": v} for k, v in rates[edit].items()]
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = ["| world | behavior (target / side) | donor | base | NodiReFT adapter | LoRA | steering (layer, scale) | "
             "LoRA carries | steering carries |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, runs in table.groupby("seed", sort=False):
        first = runs.iloc[0]
        value = {(r.edit, r.metric): r.value for r in runs.itertuples()}
        cell = {e: f"{value[(e, first.target)]:.2f} / {value[(e, first.side)]:.2f}" for e in EDITS}
        steer = runs[runs.edit == "steering"].iloc[0]
        ok = {e: "yes" if runs[runs.edit == e].carries.iloc[0] else "no" for e in ("lora", "steering")}
        lines.append(f"| {seed} | {first.behavior} ({first.target} / {first.side}) | {first.donor} | {cell['base']} | "
                     f"{cell['reft']} | {cell['lora']} | {cell['steering']} ({int(steer.layer)}, {steer.scale:g}) | "
                     f"{ok['lora']} | {ok['steering']} |")
    per = table.drop_duplicates(["seed", "edit"])
    n = per.seed.nunique()
    lines += ["", f"LoRA carries the behavior in {int(per[per.edit == 'lora'].carries.sum())} of {n} worlds, the "
              f"steering vector in {int(per[per.edit == 'steering'].carries.sum())} of {n} (≥ 0.9 × the NodiReFT "
              "adapter's target rate; in refusal worlds false refusal within +0.02 of the adapter's). Build seconds "
              f"per edit (training, scale search, test scoring): LoRA median "
              f"{per[per.edit == 'lora'].build_s.median():.0f}, steering median "
              f"{per[per.edit == 'steering'].build_s.median():.0f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="dev", help="dev, test, or world seeds like 0,8")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    named = {"dev": generated.DEV_SEEDS, "test": generated.TEST_SEEDS}
    seeds = named.get(args.seeds) or [int(s) for s in args.seeds.split(",")]
    built = [s for s in seeds if (generated.world_folder(s) / "world.json").is_file()]
    if not built:
        parser.error(f"none of the worlds {list(seeds)} is built; build them with "
                     "python benchmarks/generated_worlds.py --seeds ...")
    table = pd.DataFrame([row for s in built for row in world_rows(s)])
    stem = f"generated_edits_{args.seeds.replace(',', '-')}"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{stem}.csv", index=False)
    text = markdown(table)
    if len(built) < len(seeds):
        text += f"\nNot built (left out): worlds {sorted(set(seeds) - set(built))}.\n"
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
