"""Benchmark: a transfer's passes whole and from cached prefix states, measured side by side in one run.

On zoo pairs, with each donor's adapter compiled into the recipient (a last-token edit, as every candidate and polish
step of ``cv.transfer`` is), the donor's answers to the adapter's first 128 training prompts are scored and trained
on the way ``cv.transfer`` does it (``pipeline.forced_passes.ForcedPasses``), and its setup is run as
``pipeline.search.prepare`` runs it:

- ``answers``: the donor's greedy answers with and without its adapter (``agreement.answer_pair``: both generations
  from the prompts' shared states, or each whole);
- ``profiles``: both models profiled on 96 prompts and each followed by the donor's first answer tokens with and
  without the adapter (``profile(..., share_prefixes=True)``: each prompt once, its continuations from its states);
- ``score``: the recipient scores the donor+adapter's answers on all prompts under the edit (what one candidate's
  scoring is), ``--scorings`` times;
- ``train``: ``--steps`` polish steps (``pipeline.polish.Distillation``, 16 pairs a step) from the same start.

Cached, a scoring or training pass also starts from the output of the edit's lowest block, taken once per prompt and
answer (the blocks up to it are the same under the edit), so it runs only the blocks above.

Each is run whole and from cached states (their pass over the prompts included), in alternating order over
``--rounds`` rounds; a ratio is the median over rounds of the cached time over the whole time in the same round
(paired: a slow spell of a shared machine hits both). The FLOPs are what each counted. The results must agree: the
script checks that the answers are equal, the profiles within 1e-4, the greedy agreements equal and the
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

from commandv_interp import profile, zoo
from commandv_interp.access import forward_flops, token_flops
from commandv_interp.pipeline import transfer
from commandv_interp.pipeline.agreement import (answer_pair, behavior_span, onset_prompts, score_responses,
                                                targets_from)
from commandv_interp.pipeline.candidates import native_deltas
from commandv_interp.pipeline.forced_passes import ForcedPasses
from commandv_interp.pipeline.polish import Distillation
from commandv_interp.profiles import profile_tokens

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
PAIRS = ("llama-6x128:gpt2-4x96", "gpt2-4x96:qwen2-5x160", "qwen2-5x160:llama-6x128")


def setup(donor_name: str, recipient_name: str, behavior: str):
    """The donor, its adapter, the recipient, a compiled last-token edit of the adapter (from a paste-only transfer),
    the prompts, the donor's answers and the donor+adapter's answers (cut to the behavior span) as targets."""
    donor, recipient = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    adapter = zoo.load_adapter(donor_name, behavior)
    prompts = zoo.prompts(behavior, "train")[:128]
    paste = transfer(donor, recipient, adapter, prompts, polish_steps=0, progress=False)
    edit = paste.compile()
    pair = answer_pair(donor, adapter, prompts, 64)
    adapted, plain, _ = behavior_span(pair.adapted, pair.plain)
    return donor, adapter, recipient, edit, prompts, pair, targets_from(prompts, adapted, plain)


def answers(donor, adapter, prompts, cache: bool) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    pair = answer_pair(donor, adapter, prompts, 64, share_prefix=cache)
    flops = sum(forward_flops(donor, [f"{p} {a}" for p, a in zip(prompts, texts)])
                for texts in (pair.adapted, pair.plain))
    return time.perf_counter() - t0, flops - token_flops(donor, pair.shared_tokens), pair


def profiles(donor, adapter, recipient, texts, cache: bool) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    got = (profile(donor, texts, layers=adapter.layers, progress=False, share_prefixes=cache),
           profile(recipient, texts, progress=False, share_prefixes=cache))
    flops = (token_flops(donor, profile_tokens(donor, texts, cache), max(adapter.layers))
             + token_flops(recipient, profile_tokens(recipient, texts, cache), recipient.n_layers - 1))
    return time.perf_counter() - t0, flops, got


def score(recipient, edit, targets, cache: bool, scorings: int) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    passes = ForcedPasses(recipient, targets.prompts, cache=cache)
    for _ in range(scorings):
        scores = score_responses(recipient, targets, native_deltas(recipient, edit), 1.0, foil=False, passes=passes)
    return time.perf_counter() - t0, passes.state_flops + passes.pass_flops, scores


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
        donor, adapter, recipient, edit, prompts, pair, targets = setup(donor_name, recipient_name, args.behavior)
        profiled = prompts[:96] + onset_prompts(prompts[:96], pair.adapted_onsets[:96], pair.plain_onsets[:96])
        for part in ("answers", "profiles", "score", "train"):
            times = {True: [], False: []}
            out = {}
            for r in range(args.rounds):
                for cache in ((True, False) if r % 2 else (False, True)):
                    if part == "answers":
                        seconds, flops, result = answers(donor, adapter, prompts, cache)
                    elif part == "profiles":
                        seconds, flops, result = profiles(donor, adapter, recipient, profiled, cache)
                    elif part == "score":
                        seconds, flops, result = score(recipient, edit, targets, cache, args.scorings)
                    else:
                        seconds, flops, result = train(recipient, edit, targets, cache, args.steps)
                    times[cache].append(seconds)
                    out[cache] = (flops, result)
            if part == "answers":
                texts = lambda a: (a.adapted, a.plain, a.adapted_onsets, a.plain_onsets)  # noqa: E731
                same = texts(out[True][1]) == texts(out[False][1])
            elif part == "profiles":
                same = all(torch.allclose(a[layer], b[layer], atol=1e-4)
                           for a, b in zip(out[True][1], out[False][1]) for layer in a.layers)
            elif part == "score":
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
    text = "\n".join([f"`{command.strip()}` ({args.behavior}; 128 prompts answered twice, 96 profiled with their "
                      f"onsets, {args.scorings} scorings, {args.steps} polish steps, {args.rounds} rounds):", "",
                      header, *lines, ""])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "prefix_passes.csv", index=False)
    (args.out / "prefix_passes.md").write_text(text)
    if not table.same_result.all():
        raise SystemExit("the cached passes disagreed with the whole ones")


if __name__ == "__main__":
    main()
