"""Surrogate fidelity of the zoo's donor edits: for every zoo model × behavior × edit kind (NodiReFT adapter, LoRA,
steering vector), the least-squares last-token NodiReFT surrogate of ``cv.transfer`` fitted on the first 128 training
prompts (a quarter held out), with its per-layer held-out R² and explained share of the delta, the held-out answer
agreement with the surrogate standing in for the edit at that layer, and the whole surrogate's agreement. Writes
``<out>/surrogate_fidelity.csv`` and ``surrogate_fidelity.md``.

    python benchmarks/surrogate_fidelity.py [--model NAME] [--behavior B] [--kind lora]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from commandv_interp import zoo
from commandv_interp.adapters.surrogate import fit_surrogate
from commandv_interp.zoo.donor_edits import ZOO_EDIT_KINDS, load_zoo_edit

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
PROMPTS = 128  # the transfer's unlabeled prompts (benchmarks/label_free.py's TRAIN_PROMPTS)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| donor | behavior | edit | layer | R² | explained | agreement at the layer | whole surrogate | "
             "answers the edit changes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        r2 = "—" if pd.isna(r.r2) else f"{r.r2:.3f}"
        lines.append(f"| {r.model} | {r.behavior} | {r.edit} | {r.layer} | {r2} | {r.explained:.3f} | "
                     f"{r.agreement:.2f} | {r.whole_agreement:.2f} | {r.edit_changes:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--behavior", action="append", default=None)
    parser.add_argument("--kind", action="append", choices=ZOO_EDIT_KINDS, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    frames = []
    for name in args.model or zoo.list_models():
        donor = zoo.load_model(name)
        for behavior in args.behavior or zoo.BEHAVIORS:
            prompts = zoo.prompts(behavior, "train")[:PROMPTS]
            for kind in args.kind or ZOO_EDIT_KINDS:
                result = fit_surrogate(donor, load_zoo_edit(name, behavior, kind), prompts)
                frames.append(result.fidelity.assign(model=name, behavior=behavior, edit=kind,
                                                     whole_agreement=result.agreement))
                print(frames[-1].to_string(index=False), flush=True)
                table = pd.concat(frames)
                args.out.mkdir(parents=True, exist_ok=True)
                table.to_csv(args.out / "surrogate_fidelity.csv", index=False)
                (args.out / "surrogate_fidelity.md").write_text(markdown(table))


if __name__ == "__main__":
    main()
