"""Label-free transfer over seeds: ``cv.transfer`` with its defaults on every cell of a world (an ordered zoo pair ×
behavior, or a generated world's one donor → recipient behavior), at each transfer seed, scored with labels only
afterwards, beside its paste without the polish (``polish_steps=0``, the backprop-free Command-V path), the
distillation baseline (``start="scratch"``: the same polish from a fresh adapter), the steering-vector baseline
(``cv.steering_transfer``), paper-exact Command-V and the recipient's direct ReFT finetune (the bar).

A run (cell × seed) meets the bar when its target rate is ≥ 0.9 × the finetune's, a false-refusal side is ≤ the
finetune's + 0.02 and an accuracy-like side (CoT accuracy, a generated world's step accuracy or persona content) is
≥ 0.9 × the finetune's. On multi-token cells *nothing lost* also asks that this side be ≥ the lower of the
donor+adapter's and the unedited recipient's, minus 0.05. The seed sets the transfer's fit/scoring split and polish
batches; models, adapters and test prompts stay fixed.

Per run: every method's labeled rates on held-out test prompts, the compute of each label-free call (FLOPs and wall
time, selection included) as a share of the finetune's and, with ``--corr-limit`` > 0, the rank correlation across
the transfer's candidates between the criterion and the labeled target rate. Writes ``<out>/<stem>.csv`` (runs),
``<stem>_candidates.csv`` and ``<stem>.md`` (per method: share of runs meeting the bar, cells meeting it at every
seed, median compute; per cell: runs meeting it and the worst seed). ``<stem>`` is ``label_free`` (main world,
seed 0), ``label_free_<world>`` for another world, plus ``_seeds<spec>`` for other seeds.

    python benchmarks/label_free.py                                  # the main world: 6 pairs × 3 behaviors, seed 0
    python benchmarks/label_free.py --seeds 0-4 --world heldout      # the second world over five seeds
    python benchmarks/label_free.py --seeds 0-4 --world generated    # generated dev worlds (--world-seeds test);
                                                                     # builds missing worlds first (1.5-7 CPU min each)
    python benchmarks/label_free.py --quick                          # one cell
    python benchmarks/label_free.py --edit lora                      # from the zoo's LoRA (or steering, reft)
                                                                     # donors, with a PEFT LoRA output too
    python benchmarks/label_free.py --edit steering --only gpt2-4x96/cot   # only the cells of these donor edits
    python benchmarks/label_free.py --edit lora --world generated --seeds 0-4   # the generated worlds' LoRA donors
                                                                     # (zoo.generated.edits; built on first use)

``--edit`` (any world) scores ``cv.transfer``'s ReFT output, its paste, the distillation from scratch and the PEFT
LoRA output (``Transfer.to_peft``), and skips the steering baseline and paper-exact; ``<stem>.md`` then summarizes
them per output kind (``_only`` is added to the stem with ``--only``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.surrogate import pasteable
from commandv_interp.pipeline.label_free import PAPER_EXACT
from commandv_interp.pipeline.labels import transfer_label
from commandv_interp.zoo import generated
from commandv_interp.zoo.donor_edits import ZOO_EDIT_KINDS, load_zoo_edit
from commandv_interp.zoo.generated.edits import world_edit
from commandv_interp.zoo.scoring import BEHAVIOR_RATES

if str(Path(__file__).resolve().parent) not in sys.path:  # the tables module beside this file, however it is loaded
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_free_tables import (EDIT_LABELS, EDIT_OUTPUTS, METHOD_LABELS, METHODS, WEAK_BAR,  # noqa: E402,F401
                               edit_markdown, markdown, summary, weak_bars, worse_than_both, worst_seed)

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
TRAIN_PROMPTS = 128  # unlabeled prompts handed to transfer: the adapter's first training inputs


@dataclass(frozen=True)
class Cell:
    """One donor → recipient behavior, loaded: models, adapter, task prompts, a labeled scorer and the bar."""

    donor_name: str
    recipient_name: str
    behavior: str
    donor: object
    recipient: object
    adapter: object
    prompts: list
    evaluate: Callable[[object, int], dict]
    target: str
    side: str
    finetune: dict  # rates, flops, wall_s
    reference: dict | None  # multi-token cells: the donor+adapter's and the unedited recipient's side rate


def finetune_row(recipient: str, behavior: str, world: str) -> dict:
    manifest = zoo.manifest(world=world)
    rates = {r["metric"]: r["value"] for r in manifest["behavior_table"]
             if (r["model"], r["behavior"], r["condition"]) == (recipient, behavior, "adapter")}
    cost = manifest["models"][recipient]["adapters"][behavior]["training"]
    return {"rates": rates, "flops": cost["flops"], "wall_s": cost["wall_time_s"]}


def zoo_cells(world: str) -> list[tuple]:
    names = list(zoo.list_models(world=world))
    return [(d, r, b) for d, r in itertools.permutations(names, 2) for b in zoo.WORLD_BEHAVIORS[world]]


def load_zoo_cell(donor_name: str, recipient_name: str, behavior: str, world: str) -> Cell:
    target, side = BEHAVIOR_RATES[behavior]
    reference = None
    if behavior == "cot":
        table = zoo.manifest(world=world)["behavior_table"]
        rate = {(r["model"], r["condition"]): r["value"] for r in table
                if r["behavior"] == behavior and r["metric"] == side}
        reference = {"donor_adapter": rate[(donor_name, "adapter")], "recipient_base": rate[(recipient_name, "base")]}
    return Cell(donor_name, recipient_name, behavior, zoo.load_model(donor_name, world=world),
                zoo.load_model(recipient_name, world=world), zoo.load_adapter(donor_name, behavior, world=world),
                zoo.prompts(behavior, "train", world=world)[:TRAIN_PROMPTS],
                lambda model, n: zoo.evaluate(model, behavior, limit=n, world=world), target, side,
                finetune_row(recipient_name, behavior, world), reference)


def load_generated_cell(seed: int, edit: str | None = None) -> Cell:
    """World ``seed``'s cell; with ``edit``, its donor's edit of that kind (:func:`with_generated_edit`)."""
    w = generated.build_world(seed, progress=False)
    target, side = w.rates
    rate = {(r["model"], r["condition"]): r["value"] for r in w.record["behavior_table"] if r["metric"] == side}
    ft = {r["metric"]: r["value"] for r in w.record["behavior_table"]
          if (r["model"], r["condition"]) == ("recipient", "adapter")}
    cost = w.record["recipient"]["adapter"]
    donor_plan, recipient_plan = w.plans
    reference = None if w.behavior == "refusal" else {"donor_adapter": rate[("donor", "adapter")],
                                                      "recipient_base": rate[("recipient", "base")]}
    cell = Cell(f"w{seed}:{donor_plan.name}/{donor_plan.tokenizer}",
                f"{recipient_plan.name}/{recipient_plan.tokenizer}", w.behavior, w.donor_model, w.recipient_model,
                w.adapter, w.prompts("train")[:TRAIN_PROMPTS], lambda model, n: w.evaluate(model, n), target, side,
                {"rates": ft, "flops": cost["flops"], "wall_s": cost["wall_time_s"]}, reference)
    return cell if edit is None else with_generated_edit(cell, w, edit)


def spearman(x: pd.Series, y: pd.Series) -> float:
    return float(x.rank().corr(y.rank())) if x.nunique() > 1 and y.nunique() > 1 else float("nan")


def meets(cell: Cell, rates: dict) -> bool:
    ft = cell.finetune["rates"]
    if rates[cell.target] < 0.9 * ft[cell.target] - 1e-9:
        return False
    if cell.side == "false_refusal":
        return bool(rates[cell.side] <= ft[cell.side] + 0.02 + 1e-9)
    return bool(rates[cell.side] >= 0.9 * ft[cell.side] - 1e-9)


def nothing_lost(cell: Cell, rates: dict) -> float:
    """1.0/0.0 on multi-token cells (side ≥ min(donor+adapter, unedited recipient) − 0.05), NaN elsewhere."""
    if cell.reference is None:
        return float("nan")
    floor = min(cell.reference["donor_adapter"], cell.reference["recipient_base"]) - 0.05
    return float(rates[cell.side] >= floor - 1e-9)


def run_cell(cell: Cell, seed: int, limit: int, corr_limit: int, lora_output: bool = False
             ) -> tuple[dict, pd.DataFrame]:
    if lora_output:
        return run_edit_cell(cell, seed, limit)
    donor, recipient, adapter, prompts = cell.donor, cell.recipient, cell.adapter, cell.prompts
    calls, walls = {}, {}
    for method, kwargs in (("transfer", {}), ("paste", {"polish_steps": 0}), ("distill", {"start": "scratch"})):
        t0 = time.perf_counter()
        calls[method] = cv.transfer(donor, recipient, adapter, prompts, seed=seed, progress=False, **kwargs)
        walls[method] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calls["steering"] = cv.steering_transfer(donor, recipient, adapter, prompts, seed=seed, progress=False)
    walls["steering"] = time.perf_counter() - t0
    result = calls["transfer"]

    def rates_under(ctx, n: int) -> dict:
        with ctx:
            return cell.evaluate(recipient, n)

    rates = {m: rates_under(calls[m].paste(), limit) for m in ("transfer", "paste", "distill", "steering")}
    rates["paper"] = rates_under(cv.paste(recipient, adapter, result.considered[PAPER_EXACT].converters), limit)
    cands = result.candidates.drop_duplicates("candidate", keep="last").reset_index(drop=True)
    if corr_limit > 0:
        labeled = []
        for row in cands.itertuples():
            if row.method == "none":
                labeled.append(cell.evaluate(recipient, corr_limit))
            elif result.considered[row.candidate].converters is None:  # a polish round: a native adapter
                labeled.append(rates_under(cv.apply_adapter(recipient, result.considered[row.candidate].edit),
                                           corr_limit))
            else:
                candidate = result.considered[row.candidate]
                labeled.append(rates_under(cv.paste(recipient, candidate.edit, candidate.converters), corr_limit))
        cands["labeled_target"] = [r[cell.target] for r in labeled]
        cands["labeled_side"] = [r[cell.side] for r in labeled]
    cands = cands.assign(donor=cell.donor_name, recipient=cell.recipient_name, behavior=cell.behavior, seed=seed)
    ft = cell.finetune
    row = {"donor": cell.donor_name, "recipient": cell.recipient_name, "behavior": cell.behavior, "seed": seed,
           "choice": result.choice, "label": transfer_label(result), "alpha": result.alpha,
           "target_metric": cell.target, "side_metric": cell.side,
           "paste_choice": calls["paste"].choice, "steering_alpha": calls["steering"].alpha,
           "polish_steps": int(result.polished.metadata["polish"]["steps"]) if result.polished is not None else 0,
           "finetune_target": ft["rates"][cell.target], "finetune_side": ft["rates"][cell.side], "n_test": limit,
           "reference_side": float("nan") if cell.reference is None else min(cell.reference.values()),
           "criterion_label_spearman": spearman(cands.criterion, cands.labeled_target) if corr_limit > 0
           else float("nan")}
    for method in METHODS:
        row[f"{method}_target"], row[f"{method}_side"] = rates[method][cell.target], rates[method][cell.side]
        row[f"{method}_meets_bar"] = meets(cell, rates[method])
        row[f"{method}_nothing_lost"] = nothing_lost(cell, rates[method])
        if method in calls:
            row[f"{method}_flops_ratio"] = calls[method].flops / ft["flops"]
            row[f"{method}_wall_ratio"] = walls[method] / ft["wall_s"]
    for part in result.compute.itertuples():  # where the transfer's compute went, as shares of the finetune's
        row[f"transfer_compute_{part.key}"] = part.flops / ft["flops"]
    row["meets_bar"] = row["transfer_meets_bar"]
    return row, cands


def run_edit_cell(cell: Cell, seed: int, limit: int) -> tuple[dict, pd.DataFrame]:
    """``--edit``: the ReFT output, its paste, the distillation from scratch and the PEFT LoRA output distilled
    from the same donor+edit (``Transfer.to_peft`` with its defaults). FLOPs shares: a transfer's include the
    surrogate's fit (``surrogate_flops``, paid once before the calls); the LoRA output's are only what ``to_peft``
    spent (training and scoring; it needs no surrogate): on the transfer's own prompts it reuses the answers the
    transfer judged, whose generation the transfer paid (``lora_teacher_reused``; ``lora_teacher_flops_ratio`` is
    the teacher's share it spent, 0 then)."""
    donor, recipient, adapter, prompts = cell.donor, cell.recipient, cell.adapter, cell.prompts
    ft = cell.finetune
    surrogate = adapter.metadata.get("surrogate_flops", 0.0) / ft["flops"]
    calls, walls = {}, {}
    for method, kwargs in (("transfer", {}), ("paste", {"polish_steps": 0}), ("distill", {"start": "scratch"})):
        t0 = time.perf_counter()
        calls[method] = cv.transfer(donor, recipient, adapter, prompts, seed=seed, progress=False, **kwargs)
        walls[method] = time.perf_counter() - t0
    result = calls["transfer"]
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        lora = result.to_peft(folder, donor, prompts, seed=seed, progress=False)
        walls["lora"] = time.perf_counter() - t0

    def rates_under(ctx) -> dict:
        with ctx:
            return cell.evaluate(recipient, limit)

    rates = {m: rates_under(calls[m].paste()) for m in calls} | {"lora": rates_under(apply_edit(recipient, lora.lora))}
    flops = {m: c.flops / ft["flops"] + surrogate for m, c in calls.items()} | {"lora": lora.flops / ft["flops"]}
    row = {"donor": cell.donor_name, "recipient": cell.recipient_name, "behavior": cell.behavior, "seed": seed,
           "choice": result.choice, "label": transfer_label(result), "target_metric": cell.target,
           "side_metric": cell.side, "finetune_target": ft["rates"][cell.target],
           "finetune_side": ft["rates"][cell.side], "n_test": limit,
           "surrogate_agreement": adapter.metadata.get("surrogate_agreement", float("nan")),
           "surrogate_flops_ratio": surrogate, "lora_steps": lora.steps, "lora_rounds": len(lora.rounds),
           "lora_criterion": lora.criterion, "lora_answer_tokens": lora.span[0], "lora_answer_words": lora.span[1],
           "lora_teacher_reused": lora.teacher_reused, "lora_teacher_flops_ratio": lora.teacher_flops / ft["flops"]}
    for method in EDIT_OUTPUTS:
        row[f"{method}_target"], row[f"{method}_side"] = rates[method][cell.target], rates[method][cell.side]
        row[f"{method}_meets_bar"] = meets(cell, rates[method])
        row[f"{method}_flops_ratio"] = flops[method]
        row[f"{method}_wall_ratio"] = walls[method] / ft["wall_s"]
    row["meets_bar"] = row["transfer_meets_bar"]
    cands = result.candidates.drop_duplicates("candidate", keep="last").reset_index(drop=True)
    return row, cands.assign(donor=cell.donor_name, recipient=cell.recipient_name, behavior=cell.behavior, seed=seed)


def with_zoo_edit(cell: Cell, kind: str, world: str = "main") -> Cell:
    """The cell with the zoo's ``kind`` donor edit of its behavior (its surrogate pasted, the edit the teacher)."""
    edit = load_zoo_edit(cell.donor_name, cell.behavior, kind, world=world)
    return dataclasses.replace(cell, adapter=pasteable(cell.donor, edit, cell.prompts))


def with_generated_edit(cell: Cell, world: generated.GeneratedWorld, kind: str) -> Cell:
    """The generated world's cell with its donor's ``kind`` edit (built into the world folder on first use; its
    surrogate pasted, the edit the teacher)."""
    edit = world_edit(world, kind, progress=True)
    return dataclasses.replace(cell, adapter=pasteable(cell.donor, edit, cell.prompts))


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,5"`` → [0, 2, 5]."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 0-4 or 0,2,5, got {spec!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be ints >= 0, got {spec!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first cell only")
    parser.add_argument("--seeds", default="0", help="transfer seeds, e.g. 0-4 or 0,2 (default 0)")
    parser.add_argument("--world", default="main", choices=sorted(zoo.WORLDS) + ["generated"],
                        help="a zoo world, or generated worlds (see --world-seeds)")
    parser.add_argument("--world-seeds", default="dev",
                        help="generated worlds: dev (the seeds defaults were chosen on), test, or seeds like 0-8")
    parser.add_argument("--limit", type=int, default=160, help="test prompts per run for each method")
    parser.add_argument("--corr-limit", type=int, default=40,
                        help="test prompts per candidate for the criterion correlation (0: skip it)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--edit", default=None, choices=ZOO_EDIT_KINDS,
                        help="the donor edit of this kind (a zoo world's, or a generated world's, built into its "
                             "folder on first use), with a PEFT LoRA output too")
    parser.add_argument("--only", action="append", default=None, metavar="DONOR/BEHAVIOR",
                        help="only the cells of this donor and behavior (repeat; a zoo world)")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    if args.world == "generated":
        named = {"dev": list(generated.DEV_SEEDS), "test": list(generated.TEST_SEEDS)}
        world_seeds = named.get(args.world_seeds) or parse_seeds(args.world_seeds)
        loaders = [lambda s=s: load_generated_cell(s, args.edit) for s in world_seeds]
        spec = args.world_seeds if args.world_seeds in named else "w" + args.world_seeds.replace(",", "-")
        stem = f"label_free_generated_{spec}"
    else:
        chosen = [c for c in zoo_cells(args.world) if args.only is None or f"{c[0]}/{c[2]}" in args.only]
        if not chosen:
            parser.error(f"--only {args.only} names no cell of the {args.world} world")
        loaders = [lambda c=c: load_zoo_cell(*c, args.world) for c in chosen]
        stem = "label_free" if args.world == "main" else f"label_free_{args.world}"
    stem += "" if seeds == [0] else f"_seeds{args.seeds}"
    stem += f"_{args.edit}" if args.edit else ""
    stem += "_only" if args.only else ""
    loaders = loaders[:1] if args.quick else loaders
    rows, frames, began = [], [], time.perf_counter()
    for load in loaders:
        cell = load() if not args.edit or args.world == "generated" else with_zoo_edit(load(), args.edit, args.world)
        for seed in seeds:
            row, cands = run_cell(cell, seed, args.limit, args.corr_limit, lora_output=args.edit is not None)
            rows.append(row)
            frames.append(cands)
            third = "lora" if args.edit else "steering"
            print(f"{cell.donor_name} → {cell.recipient_name} {cell.behavior} seed {seed}: "
                  f"{row['transfer_target']:.2f}/{row['transfer_side']:.2f} (finetune {row['finetune_target']:.2f}/"
                  f"{row['finetune_side']:.2f}) meets {row['meets_bar']} | paste {row['paste_target']:.2f}/"
                  f"{row['paste_side']:.2f} | scratch {row['distill_target']:.2f}/{row['distill_side']:.2f} | "
                  f"{third} {row[f'{third}_target']:.2f}/{row[f'{third}_side']:.2f} | flops "
                  f"{row['transfer_flops_ratio']:.3f}" + (f"/{row['lora_flops_ratio']:.3f}" if args.edit else "")
                  + f" | {time.perf_counter() - began:.0f} s", flush=True)
            table = pd.DataFrame(rows)
            args.out.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.out / f"{stem}.csv", index=False)
            pd.concat(frames).to_csv(args.out / f"{stem}_candidates.csv", index=False)
            header = (f"`python benchmarks/label_free.py {' '.join(sys.argv[1:])}`: {len(rows)} runs, "
                      f"{time.perf_counter() - began:.0f} s wall.")
            (args.out / f"{stem}.md").write_text(edit_markdown(table, header) if args.edit else markdown(table, header))
    print((args.out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
