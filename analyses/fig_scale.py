"""Figure: the transfer's scale search on the main world's refusal cells: the held-out criterion it reads (no
labels) and the test rates it was meant to protect (labels, afterwards), at every scale it scored, for a few runs.

    python analyses/fig_scale.py [--runs llama-6x128:qwen2-5x160:3 ...] [--out docs/figures]

Each run is ``cv.transfer`` with its defaults (scale search on) on the adapter's first 128 training prompts at one
transfer seed; the polished adapter at each scale the search scored (its stage-4 candidates, and the round itself at
scale 1) is then scored with labels on 160 held-out test prompts. Writes scale_search.{png,pdf,csv}.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import pandas as pd

import _figure
import commandv_interp as cv
from commandv_interp import zoo
from commandv_interp.paste import apply_adapter
from commandv_interp.pipeline.scale import scale_of

STEM = "scale_search"
BEHAVIOR = "refusal"
RUNS = ("llama-6x128:qwen2-5x160:3", "qwen2-5x160:llama-6x128:4", "gpt2-4x96:llama-6x128:0",
        "llama-6x128:gpt2-4x96:1", "qwen2-5x160:gpt2-4x96:2")
PANELS = (("criterion", "held-out criterion\n(no labels)"),
          ("refusal", "harmful test\nrequests refused"),
          ("false_refusal", "benign test\nrequests refused"))


def scan(donor_name: str, recipient_name: str, seed: int) -> pd.DataFrame:
    """The scored scales of one run: criterion (from the candidates table) and test rates (with labels)."""
    donor, recipient = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    t = cv.transfer(donor, recipient, zoo.load_adapter(donor_name, BEHAVIOR), zoo.prompts(BEHAVIOR, "train")[:128],
                    seed=seed, progress=False)
    if t.polished is None:  # a paste was chosen: no scale was searched
        print(f"{donor_name} → {recipient_name} seed {seed}: the choice {t.choice!r} is a paste; no scales to show")
        return pd.DataFrame()
    base = t.choice.split("*scale=")[0]
    rows = t.candidates[(t.candidates.candidate == base) | t.candidates.candidate.str.startswith(base + "*scale=")]
    out = []
    for name, criterion in zip(rows.candidate, rows.criterion):
        with apply_adapter(recipient, t.considered[name].edit):
            rates = zoo.evaluate(recipient, BEHAVIOR, limit=160)
        out.append({"run": f"{donor_name} → {recipient_name}, seed {seed}", "scale": scale_of(name),
                    "chosen": name == t.choice, "criterion": float(criterion), "refusal": rates["refusal"],
                    "false_refusal": rates["false_refusal"], "candidate": name})
    return pd.DataFrame(out).drop_duplicates("scale").sort_values("scale")


def plot(frame: pd.DataFrame, finetune: dict) -> plt.Figure:
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(7.5, 7.2), sharex=True)
    colors = plt.get_cmap("tab10")
    for k, (run, rows) in enumerate(frame.groupby("run", sort=False)):
        for ax, (col, _) in zip(axes, PANELS):
            ax.plot(rows.scale, rows[col], "-o", color=colors(k), ms=4, lw=1.2, label=run)
            chosen = rows[rows.chosen]
            ax.scatter(chosen.scale, chosen[col], s=110, facecolors="none", edgecolors=colors(k), lw=1.8, zorder=4)
    for ax, (col, label) in zip(axes, PANELS):
        ax.axvline(1.0, color="0.5", ls=":", lw=1)
        ax.set_ylabel(label)
        ax.set_ylim(-0.04, 1.04)
    axes[1].axhline(0.9 * finetune["refusal"], color="k", ls="--", lw=1, label="bar: 0.9 × recipient finetune")
    axes[2].axhline(finetune["false_refusal"] + 0.02, color="k", ls="-.", lw=1, label="bar: finetune + 0.02")
    axes[-1].set_xscale("log")
    axes[-1].set_xticks([0.64, 0.8, 1.0, 1.25, 1.5625])
    axes[-1].set_xticklabels(["0.64", "0.8", "1", "1.25", "1.56"])
    axes[-1].set_xlabel("scale of the polished adapter's delta (circled: the scale chosen)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        h, lab = ax.get_legend_handles_labels()
        handles += [x for x, y in zip(h, lab) if y.startswith("bar")]
        labels += [y for y in lab if y.startswith("bar")]
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Scale search on the main world's refusal cells (128 prompts, one seed each)", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 0.97))
    return fig


def main() -> None:
    started = time.perf_counter()
    args = _figure.runs_parser(__doc__, RUNS, "DONOR:RECIPIENT:SEED",
                               "transfers to scan: donor, recipient and transfer seed").parse_args()
    frames = []
    for spec in args.runs:
        donor_name, recipient_name, seed = spec.split(":")
        frames.append(scan(donor_name, recipient_name, int(seed)))
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise SystemExit("none of the runs chose a polished edit, so no scale was searched; pass other --runs")
    table = pd.DataFrame(zoo.manifest()["behavior_table"])
    finetune = {m: float(table[(table.behavior == BEHAVIOR) & (table.condition == "adapter") & (table.metric == m)]
                         .value.min()) for m in ("refusal", "false_refusal")}
    caption = ("The transfer reads only the held-out criterion (top) and keeps the middle of the scales within one "
               "scoring prompt of its best; the test rates (below) were scored with labels afterwards.")
    _figure.save(plot(frame, finetune), frame, args.out, STEM, caption, started)


if __name__ == "__main__":
    main()
