"""Label-free transfer on a zoo world: ``cv.transfer`` with its defaults on every ordered pair × behavior, scored
with labels only afterwards, beside the paste it polished (as it was), the distillation baseline
(``cv.transfer(..., start="scratch")``: the same polish from a fresh adapter), the steering-vector baseline
(``cv.steering_transfer``), paper-exact Command-V and the recipient's direct ReFT finetune.

Per cell: the chosen candidate, its labeled rates on held-out test prompts, the steering baseline's and the
paper-exact candidate's, the finetune's (from the zoo manifest, measured on all 160 test prompts), the compute of
each label-free call (FLOPs and wall time, selection included) as a share of the finetune's, and, across the
candidates of the cell (each at its last scoring), the rank correlation between the label-free criterion and the
labeled target rate (each candidate scored on ``--corr-limit`` test prompts). Writes ``<out>/label_free.csv``,
``label_free_candidates.csv`` and ``label_free.md`` (``label_free_<world>*`` for another world than the main one).

    python benchmarks/label_free.py                   # the main world: 6 pairs × 3 behaviors
    python benchmarks/label_free.py --world heldout   # the second world, nobody tuned on
    python benchmarks/label_free.py --quick           # one pair, one behavior
    python benchmarks/label_free.py --edit lora       # from the zoo's LoRA donors (or steering, reft), with a
                                                      # PEFT LoRA output beside the ReFT one (label_free_lora*)
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import pandas as pd

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.pipeline.label_free import PAPER_EXACT
from commandv_interp.zoo.donor_edits import ZOO_EDIT_KINDS, load_zoo_edit
from commandv_interp.zoo.evaluate import MAX_NEW_TOKENS
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
TRAIN_PROMPTS = 128  # unlabeled prompts handed to transfer: the adapter's first training inputs


def finetune_row(recipient: str, behavior: str, world: str) -> dict:
    manifest = zoo.manifest(world=world)
    rates = {r["metric"]: r["value"] for r in manifest["behavior_table"]
             if (r["model"], r["behavior"], r["condition"]) == (recipient, behavior, "adapter")}
    cost = manifest["models"][recipient]["adapters"][behavior]["training"]
    return {"rates": rates, "flops": cost["flops"], "wall_s": cost["wall_time_s"]}


def spearman(x: pd.Series, y: pd.Series) -> float:
    return float(x.rank().corr(y.rank())) if x.nunique() > 1 and y.nunique() > 1 else float("nan")


def run_cell(donor_name: str, recipient_name: str, behavior: str, limit: int, corr_limit: int,
             world: str, edit: str | None = None) -> tuple[dict, pd.DataFrame]:
    donor, recipient = zoo.load_model(donor_name, world=world), zoo.load_model(recipient_name, world=world)
    adapter = zoo.load_adapter(donor_name, behavior, world=world)
    target, side = BEHAVIOR_RATES[behavior]
    prompts = zoo.prompts(behavior, "train", world=world)[:TRAIN_PROMPTS]
    if edit is not None:  # --edit: the zoo's LoRA or steering donor (its surrogate pasted, the edit the teacher)
        adapter = pasteable(donor, load_zoo_edit(donor_name, behavior, edit), prompts)
    t0 = time.perf_counter()
    result = cv.transfer(donor, recipient, adapter, prompts, progress=False)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    steering = cv.steering_transfer(donor, recipient, adapter, prompts, progress=False)
    steering_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    scratch = cv.transfer(donor, recipient, adapter, prompts, start="scratch", progress=False)
    scratch_wall = time.perf_counter() - t0

    def rates_under(ctx, n: int) -> dict:
        with ctx:
            return zoo.evaluate(recipient, behavior, limit=n, world=world)

    chosen = rates_under(result.paste(), limit)
    steered = rates_under(steering.paste(), limit)
    distilled = rates_under(scratch.paste(), limit)
    paper_rates = rates_under(cv.paste(recipient, adapter, result.fits[PAPER_EXACT], alpha=1.0), limit)
    cands = result.candidates.drop_duplicates(["candidate", "alpha"], keep="last").reset_index(drop=True)
    base = cands[cands.stage == 2].iloc[-1]  # the paste the polish started from (as it is)
    unpolished = rates_under(cv.paste(recipient, result.pasted[base.candidate], result.fits[base.candidate],
                                      alpha=float(base.alpha)), limit)

    def edit_of(row):
        if row.candidate in result.rounds:
            return cv.apply_adapter(recipient, result.rounds[row.candidate])
        return cv.paste(recipient, result.pasted[row.candidate], result.fits[row.candidate], alpha=float(row.alpha))

    labeled = []
    for row in cands.itertuples():
        if row.method == "none":
            labeled.append(zoo.evaluate(recipient, behavior, limit=corr_limit, world=world))
        else:
            labeled.append(rates_under(edit_of(row), corr_limit))
    cands["labeled_target"] = [r[target] for r in labeled]
    cands["labeled_side"] = [r[side] for r in labeled]
    cands = cands.assign(donor=donor_name, recipient=recipient_name, behavior=behavior)
    ft = finetune_row(recipient_name, behavior, world)

    def meets(rates: dict) -> bool:
        return bool(rates[target] >= 0.9 * ft["rates"][target] - 1e-9
                    and (side != "false_refusal" or rates[side] <= ft["rates"][side] + 0.02)
                    and (behavior != "cot" or rates[side] >= 0.9 * ft["rates"][side] - 1e-9))

    extra = {}
    if edit is not None:  # the LoRA output beside the ReFT one, distilled from the same donor+edit
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            lora = result.to_peft(folder, donor, prompts, max_new_tokens=MAX_NEW_TOKENS[behavior], progress=False)
            lora_wall = time.perf_counter() - t0
        lora_rates = rates_under(apply_edit(recipient, lora.lora), limit)
        extra = {"edit": edit, "lora_target": lora_rates[target], "lora_side": lora_rates[side],
                 "lora_meets_bar": meets(lora_rates), "lora_flops_ratio": lora.flops / ft["flops"],
                 "lora_wall_ratio": lora_wall / ft["wall_s"],
                 "surrogate_agreement": adapter.metadata.get("surrogate_agreement", float("nan")),
                 "surrogate_flops_ratio": adapter.metadata.get("surrogate_flops", 0.0) / ft["flops"]}
    row = extra | {"donor": donor_name, "recipient": recipient_name, "behavior": behavior, "choice": result.choice,
           "alpha": result.alpha, "target_metric": target, "side_metric": side,
           "transfer_target": chosen[target], "transfer_side": chosen[side],
           "paste_target": unpolished[target], "paste_side": unpolished[side], "paste_choice": base.candidate,
           "polish_steps": int(result.polished.metadata["polish"]["steps"]) if result.polished is not None else 0,
           "steering_target": steered[target], "steering_side": steered[side], "steering_alpha": steering.alpha,
           "distill_target": distilled[target], "distill_side": distilled[side],
           "paper_target": paper_rates[target], "paper_side": paper_rates[side],
           "finetune_target": ft["rates"][target], "finetune_side": ft["rates"][side], "meets_bar": meets(chosen),
           "steering_meets_bar": meets(steered), "paper_meets_bar": meets(paper_rates),
           "paste_meets_bar": meets(unpolished), "distill_meets_bar": meets(distilled),
           "distill_flops_ratio": scratch.flops / ft["flops"], "distill_wall_ratio": scratch_wall / ft["wall_s"],
           "flops_ratio": result.flops / ft["flops"], "wall_ratio": wall / ft["wall_s"],
           "steering_flops_ratio": steering.flops / ft["flops"], "steering_wall_ratio": steering_wall / ft["wall_s"],
           "criterion_label_spearman": spearman(cands.criterion, cands.labeled_target), "n_test": limit}
    return row, cands


def markdown(table: pd.DataFrame) -> str:
    lines = ["| donor → recipient | behavior | transfer (target / side) | its paste before the polish | "
             "distillation from scratch | steering | paper-exact | finetune | meets bar | choice | FLOPs ratio | "
             "wall ratio | Spearman(criterion, labeled) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.donor} → {r.recipient} | {r.behavior} | {r.transfer_target:.2f} / {r.transfer_side:.2f} | "
                     f"{r.paste_target:.2f} / {r.paste_side:.2f} | {r.distill_target:.2f} / {r.distill_side:.2f} | "
                     f"{r.steering_target:.2f} / {r.steering_side:.2f} | "
                     f"{r.paper_target:.2f} / {r.paper_side:.2f} | {r.finetune_target:.2f} / {r.finetune_side:.2f} | "
                     f"{'yes' if r.meets_bar else 'no'} | `{r.choice}` | {r.flops_ratio:.3f} | "
                     f"{r.wall_ratio:.3f} | {r.criterion_label_spearman:.2f} |")
    lines += ["", f"Cells meeting the bar: transfer {int(table.meets_bar.sum())} of {len(table)} (its paste before "
                  f"the polish {int(table.paste_meets_bar.sum())}), distillation from scratch "
                  f"{int(table.distill_meets_bar.sum())}, steering {int(table.steering_meets_bar.sum())}, paper-exact "
                  f"{int(table.paper_meets_bar.sum())}. Transfer: median FLOPs ratio {table.flops_ratio.median():.3f}, "
                  f"median wall-time ratio {table.wall_ratio.median():.3f}; distillation from scratch: "
                  f"{table.distill_flops_ratio.median():.3f} and {table.distill_wall_ratio.median():.3f}; steering: "
                  f"{table.steering_flops_ratio.median():.3f} and {table.steering_wall_ratio.median():.3f}. Median "
                  f"Spearman correlation of the criterion with the labeled target rate across candidates "
                  f"{table.criterion_label_spearman.median():.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first cell only")
    parser.add_argument("--limit", type=int, default=160, help="test prompts per cell for the chosen paste")
    parser.add_argument("--corr-limit", type=int, default=40, help="test prompts per candidate for the correlation")
    parser.add_argument("--world", default="main", choices=sorted(zoo.WORLDS), help="the zoo world to run on")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--edit", default=None, choices=ZOO_EDIT_KINDS,
                        help="donor edit of the zoo (main world) and a LoRA output beside the ReFT one")
    args = parser.parse_args()
    names = list(zoo.list_models(world=args.world))
    cells = [(d, r, b) for d, r in itertools.permutations(names, 2) for b in zoo.WORLD_BEHAVIORS[args.world]]
    cells = cells[:1] if args.quick else cells
    stem = "label_free" if args.world == "main" else f"label_free_{args.world}"
    stem += f"_{args.edit}" if args.edit else ""
    rows, frames = [], []
    for d, r, b in cells:
        row, cands = run_cell(d, r, b, args.limit, args.corr_limit, args.world, args.edit)
        rows.append(row)
        frames.append(cands)
        print(f"{d} → {r} {b}: {row['transfer_target']:.2f}/{row['transfer_side']:.2f} "
              f"(finetune {row['finetune_target']:.2f}) choice {row['choice']} flops {row['flops_ratio']:.3f} "
              f"wall {row['wall_ratio']:.3f} rho {row['criterion_label_spearman']:.2f} | steering "
              f"{row['steering_target']:.2f}/{row['steering_side']:.2f}", flush=True)
        table = pd.DataFrame(rows)
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / f"{stem}.csv", index=False)
        pd.concat(frames).to_csv(args.out / f"{stem}_candidates.csv", index=False)
        (args.out / f"{stem}.md").write_text(markdown(table))
    print(markdown(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
