"""Benchmark: a transfer's teacher-forced passes whole and from cached prefix states, measured side by side in one run.

On zoo pairs, with each donor's adapter compiled into the recipient (a last-token edit, as every candidate and polish
step of ``cv.transfer`` is), the donor's answers to the adapter's first 128 training prompts are scored and trained
on the way ``cv.transfer`` does it (``pipeline.forced_passes.ForcedPasses``):

- ``score``: the recipient scores the donor+adapter's answers on all prompts under the edit (what one candidate's
  scoring is), ``--scorings`` times;
- ``train``: ``--steps`` polish steps (``pipeline.polish.Distillation``, 16 pairs a step) from the same start.

Each is run with whole passes (``cache=False``) and from the prompts' prefix states (``cache=True``; their one pass
over the prompts is included), in alternating order over ``--rounds`` rounds; a ratio is the median over rounds of
the cached time over the whole time in the same round (paired: a slow spell of a shared machine hits both). The FLOPs
are what each counted. The scores must agree: the script checks that the greedy agreements are equal and the
log-likelihoods within 1e-3, and that both trainings reach the same loss to 1e-4.

    HF_HUB_OFFLINE=1 python benchmarks/prefix_passes.py [--pairs llama-6x128:gpt2-4x96 ...] [--rounds 5] [--out DIR]

writes ``<out>/prefix_passes.csv`` and ``.md`` (default ``docs/figures``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from commandv_interp import compile_paste, zoo
from commandv_interp.access import token_flops
from commandv_interp.pipeline import transfer
from commandv_interp.pipeline.agreement import answer_pair, behavior_span, score_responses, targets_from
from commandv_interp.pipeline.candidates import native_deltas
from commandv_interp.pipeline.forced_passes import ForcedPasses
from commandv_interp.pipeline.polish import Distillation

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
PAIRS = ("llama-6x128:gpt2-4x96", "gpt2-4x96:qwen2-5x160", "qwen2-5x160:llama-6x128")


def setup(donor_name: str, recipient_name: str, behavior: str):
    """The recipient, a compiled last-token edit of the donor's adapter (from a paste-only transfer), the prompts and
    the donor+adapter's answers (cut to the behavior span) as targets."""
    donor, recipient = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    adapter = zoo.load_adapter(donor_name, behavior)
    prompts = zoo.prompts(behavior, "train")[:128]
    paste = transfer(donor, recipient, adapter, prompts, polish_steps=0, progress=False)
    edit = paste.compile()
    pair = answer_pair(donor, adapter, prompts, 64)
    adapted, plain, _ = behavior_span(pair.adapted, pair.plain)
    return recipient, edit, prompts, targets_from(prompts, adapted, plain)


def score(recipient, edit, targets, cache: bool, scorings: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    passes = ForcedPasses(recipient, targets.prompts, cache=cache)
    batch, _, _ = passes.sequences(range(len(targets.prompts)), targets.target)
    for _ in range(scorings):
        scores = score_responses(recipient, targets, native_deltas(recipient, edit), 1.0, foil=False, passes=passes)
    flops = passes.state_flops + scorings * token_flops(recipient, int(batch.attention_mask.sum()))
    return time.perf_counter() - t0, flops, scores


def train(recipient, edit, targets, cache: bool, steps: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    passes = ForcedPasses(recipient, targets.prompts, cache=cache)
    trainer = Distillation(recipient, edit, list(targets.prompts), list(targets.target), list(targets.changed),
                           seed=0, passes=passes)
    loss = trainer.run(steps)
    return time.perf_counter() - t0, trainer.flops, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="donor:recipient zoo pairs")
    parser.add_argument("--behavior", default="refusal")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scorings", type=int, default=4, help="candidate scorings per round")
    parser.add_argument("--steps", type=int, default=24, help="polish steps per round (a polish of 2 trials and 4 rounds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.pairs:
        donor_name, recipient_name = spec.split(":")
        recipient, edit, prompts, targets = setup(donor_name, recipient_name, args.behavior)
        for part in ("score", "train"):
            times = {True: [], False: []}
            out = {}
            for r in range(args.rounds):
                for cache in ((True, False) if r % 2 else (False, True)):
                    if part == "score":
                        seconds, flops, result = score(recipient, edit, targets, cache, args.scorings)
                    else:
                        seconds, flops, result = train(recipient, edit, targets, cache, args.steps)
                    times[cache].append(seconds)
                    out[cache] = (flops, result)
            if part == "score":
                same = bool(torch.equal(out[True][1].agreement, out[False][1].agreement)
                            and torch.allclose(out[True][1].target_loglik, out[False][1].target_loglik, atol=1e-3))
            else:
                same = abs(out[True][1] - out[False][1]) <= 1e-4 * max(1.0, abs(out[False][1]))
            rows.append({"pair": spec, "part": part, "flops_ratio": out[True][0] / out[False][0],
                         "time_ratio": statistics.median(c / w for c, w in zip(times[True], times[False])),
                         "whole_s": statistics.median(times[False]), "cached_s": statistics.median(times[True]),
                         "same_result": same})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns)
    lines = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
             for row in table.itertuples(index=False)]
    command = "python benchmarks/prefix_passes.py " + " ".join(sys.argv[1:])
    text = "\n".join([f"`{command.strip()}` ({args.behavior}; {args.scorings} scorings, {args.steps} polish steps, "
                      f"{args.rounds} rounds):", "", header, *lines, ""])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "prefix_passes.csv", index=False)
    (args.out / "prefix_passes.md").write_text(text)
    if not table.same_result.all():
        raise SystemExit("the cached passes disagreed with the whole ones")


if __name__ == "__main__":
    main()
