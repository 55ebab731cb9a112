"""Command-V on the zoo's case studies: every ordered cross-architecture donor → recipient pair × behavior, on
held-out test prompts, with bootstrap 95% CIs, side by side in one run:

- ``recipient_base``       the recipient alone;
- ``cv_paper``             paper-exact Command-V: pinv converters, relative-depth layers, generic profile prompts,
                           last prompt token, α = 1;
- ``cv_paper_norm_matched`` the same converters with the norm-matched α (``commandv_interp.norm_matched_alpha``:
                           the pasted delta gets the donor delta's size relative to the residual, from profiles);
- ``cv_best``              the library's best variant for the pair, chosen on *train* prompts among a small grid
                           (converter method incl. adapter-aware ``interface``, plain or chained layer after layer
                           under the paste, × layer matching × profile prompt set incl. the small per-behavior
                           ``task`` set (32 or 16 prompts per form) × α = 1 or {¼, ½, 1, 2, 3} × norm-matched; the
                           chained fit at α ∈ {⅛, ¼, ½, 1}), per behavior, then scored on test (the grid search's
                           own time is reported apart);
- ``cv_transfer``          ``cv.transfer`` with its defaults: the paste chosen without labels by donor agreement on
                           the adapter's first 128 training inputs (its whole cost, selection included, in the
                           costs table);
- ``distill_scratch``      the distillation baseline (``cv.transfer(..., start="scratch")``): the same polish as
                           ``cv_transfer``'s, from a fresh adapter, with no paste;
- ``steering_affine``      the steering-vector baseline (``cv.steering_transfer``): the adapter's mean delta mapped
                           by an affine converter and added at the mapped layer, its scale chosen by the same
                           label-free criterion;
- ``cv_budget``            the same choice restricted to variants whose profile + derive FLOPs are at most
                           ``BUDGET`` (1%) of the direct finetune's: the issue's compute target;
- ``recipient_finetune``   the recipient with its own NodiReFT rank-8 adapter trained directly (the zoo's);
- ``donor_adapter``        the donor with its adapter (the behavior being copied);
- ``null_random_delta``    the best variant's pasted delta replaced by a random direction of the same norm;
- ``null_shuffled``        the best variant's converters refitted on a shuffled prompt pairing.

Compute: wall time and FLOPs of profile + match + fit (Command-V) vs the direct finetune's training record.

    python benchmarks/transfer.py --quick          # 2 pairs, 48 test prompts, QUICK_GRID: a few minutes
    python benchmarks/transfer.py                  # all 6 pairs, all 160 test prompts

Writes ``<out>/transfer.csv``, ``transfer_costs.csv``, ``transfer_summary.csv``, ``transfer.md`` (the README's
tables) and ``transfer.png``/``.pdf``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import commandv_interp as cv
from commandv_interp import analysis, zoo
from commandv_interp.zoo.evaluate import evaluate_outcomes
from commandv_interp.zoo.scoring import BEHAVIOR_RATES
from commandv_interp.zoo.scoring import summarize
from commandv_interp.pipeline import derive, profile_pair
from commandv_interp.pipeline.labels import transfer_label
from commandv_interp.zoo.prompt_sets import profile_prompts

if str(Path(__file__).resolve().parent) not in sys.path:  # the tables module beside this file, however it is loaded
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_tables import FIGURE_BARS, figure, markdown, summarize_pairs  # noqa: E402,F401

MAX_FALSE_REFUSAL = 0.1  # the zoo's bar for an adapter; a variant above it on train prompts is not eligible
PAPER = ("pinv", "depth", "profile")
CHAINED = "interface-chained"  # interface converters fitted layer after layer under the paste at the variant's α
GRID = [PAPER, ("ridge", "depth", "profile+train"), ("ridge", "similarity", "profile+train"),
        ("ridge", "depth", "profile+train+cue"), ("ridge", "similarity", "profile+train+cue"),
        ("procrustes", "depth", "profile+train+cue"), ("ridge", "depth", "task"),
        ("interface", "depth", "task"), ("interface", "similarity", "task"), ("procrustes", "depth", "task"),
        ("interface", "depth", "task/16"), ("interface", "depth", "profile+train+cue"),
        ("interface", "similarity", "profile+train+cue"), (CHAINED, "depth", "task"), (CHAINED, "depth", "task/16"),
        (CHAINED, "similarity", "task")]
# None: α = 1; else a multiple of the norm-matched α (the right size is often a fraction of it: the donor's delta
# is balanced between a constant push and a prompt-dependent part, and the recipient's threshold differs)
ALPHA_RULES = {"alpha=1": None, "alpha=norm/4": 0.25, "alpha=norm/2": 0.5, "alpha=norm": 1.0, "alpha=2norm": 2.0,
               "alpha=3norm": 3.0}
# the chained fit is made at its α, and needs no profiles with depth matching: fixed α values, no norm matching
CHAIN_ALPHAS = {"alpha=1/8": 0.125, "alpha=1/4": 0.25, "alpha=1/2": 0.5, "alpha=1": 1.0}
LABEL_FREE_PROMPTS = 128  # unlabeled prompts handed to cv.transfer / cv.steering_transfer: the first training inputs
BUDGET = 0.01  # cv_budget: derivation FLOPs ≤ BUDGET × the direct finetune's
REFINE_TOP = 5  # variants re-scored on the train prompts past --select-limit before one is chosen
QUICK_PAIRS = [("llama-6x128", "qwen2-5x160"), ("gpt2-4x96", "llama-6x128")]
QUICK_GRID = [PAPER, ("ridge", "depth", "profile+train"), ("procrustes", "depth", "profile+train+cue"),
              ("interface", "depth", "task"), ("interface", "depth", "profile+train+cue"), (CHAINED, "depth", "task"),
              (CHAINED, "depth", "task/16")]


def bootstrap(behavior: str, records: list[dict], n_boot: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Rate and percentile 95% CI of each metric, resampling prompts with replacement."""
    rng = np.random.default_rng(seed)
    point = summarize(behavior, records)
    keys = [k for k in point if not k.startswith("n")]
    draws = {k: [] for k in keys}
    for _ in range(n_boot):
        sample = [records[i] for i in rng.integers(0, len(records), len(records))]
        rates = summarize(behavior, sample)
        for k in keys:
            draws[k].append(rates[k])
    return {k: (point[k], float(np.percentile(draws[k], 2.5)), float(np.percentile(draws[k], 97.5))) for k in keys}


def selection_score(recipient, behavior, adapter, converters, alpha, start: int, limit: int | None) -> float:
    """Target rate − false refusal on ``limit`` *train* prompts from ``start`` (what picks ``cv_best``); a variant
    whose false refusal exceeds ``MAX_FALSE_REFUSAL`` scores minus that rate."""
    with cv.paste(recipient, adapter, converters, alpha=alpha):
        rates = summarize(behavior, evaluate_outcomes(recipient, behavior, "train", limit=limit, start=start))
    target, side = BEHAVIOR_RATES[behavior]
    if side == "false_refusal" and rates[side] > MAX_FALSE_REFUSAL:
        return -rates[side]  # refusing everything is not a transfer of refusal
    return rates[target] - (rates[side] if side == "false_refusal" else 0.0)


def refine(recipient, behavior, adapter, cands: list, select_limit: int) -> tuple | None:
    """The ``REFINE_TOP`` best of ``cands`` (scored on the first ``select_limit`` train prompts) re-scored on the
    other train prompts, which they were not chosen on; the best of those (ties: the cheaper derivation)."""
    if not cands:
        return None
    top = sorted(cands, key=lambda c: (c[3], -c[1].flops), reverse=True)[:REFINE_TOP]
    rescored = [(v, d, a, selection_score(recipient, behavior, adapter, d.converters, a, select_limit, None))
                for v, d, a, _ in top]
    return max(rescored, key=lambda c: (c[3], -c[1].flops))


def set_prompts(profile_set: str, behavior: str) -> list[str]:
    """A grid's profile set: a name of ``profile_prompts`` or ``task/<k>`` (the task set, ``k`` prompts per form)."""
    name, _, size = profile_set.partition("/")
    return profile_prompts(name, behavior if name == "task" else None, **({"task_size": int(size)} if size else {}))


def candidates(donor, recipient, adapters, select_limit: int, grid=GRID) -> tuple[dict, object]:
    """Every grid variant × α rule, scored per behavior on train prompts. Profiles are computed once per prompt
    set and shared (each derivation still counts the passes it needs); ``interface`` converters are fitted per
    adapter, chained ones per adapter and α."""
    layers = adapters[next(iter(adapters))].layers
    pairs, derived, out = {}, {}, {b: [] for b in adapters}
    for method, match, profile_set in grid:
        for behavior, adapter in adapters.items():
            key = (profile_set, behavior if profile_set.startswith("task") else None)
            if key not in pairs:
                pairs[key] = profile_pair(donor, recipient, set_prompts(profile_set, behavior))
            if method == CHAINED:
                for alpha_rule, alpha in CHAIN_ALPHAS.items():
                    d = derive(donor, recipient, pairs[key], layers, match=match, method="interface", adapter=adapter,
                               chain_alpha=alpha)
                    score = selection_score(recipient, behavior, adapter, d.converters, alpha, 0, select_limit)
                    out[behavior].append(("/".join((method, match, profile_set, alpha_rule)), d, alpha, score))
                continue
            dkey = (method, match) + key + ((behavior,) if method == "interface" else ())
            if dkey not in derived:
                derived[dkey] = derive(donor, recipient, pairs[key], layers, match=match, method=method,
                                       adapter=adapter if method == "interface" else None)
            d = derived[dkey]
            matched = cv.norm_matched_alpha(adapter, d.converters, d.donor_profile, d.recipient_profile)
            for alpha_rule, mult in ALPHA_RULES.items():
                if (method, match, profile_set) == PAPER and alpha_rule in ("alpha=1", "alpha=norm"):
                    continue  # scored as the paper conditions of their own
                alpha = 1.0 if mult is None else mult * matched
                score = selection_score(recipient, behavior, adapter, d.converters, alpha, 0, select_limit)
                out[behavior].append(("/".join((method, match, profile_set, alpha_rule)), d, alpha, score))
    return out, derived[PAPER[:2] + ("profile", None)]


def run_pair(donor_name: str, recipient_name: str, behaviors, limit, select_limit, n_boot, seed,
             grid=GRID) -> tuple[list, list]:
    donor, recipient = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    adapters = {b: zoo.load_adapter(donor_name, b) for b in behaviors}
    start = time.perf_counter()
    scored, paper = candidates(donor, recipient, adapters, select_limit, grid)
    # per behavior, on train prompts: the best on the first ones, refined on the rest; ties go to the cheaper one
    chosen = {b: refine(recipient, b, adapters[b], scored[b], select_limit) for b in behaviors}
    finetunes = {b: zoo.manifest()["models"][recipient_name]["adapters"][b]["training"] for b in behaviors}
    cheap = {b: [c for c in scored[b] if c[1].flops <= BUDGET * finetunes[b]["flops"]] for b in behaviors}
    budget = {b: refine(recipient, b, adapters[b], cheap[b], select_limit) for b in behaviors}
    selection_s = time.perf_counter() - start
    label_free = {}
    for behavior in behaviors:
        prompts = zoo.prompts(behavior, "train")[:LABEL_FREE_PROMPTS]
        t0 = time.perf_counter()
        chosen_lf = cv.transfer(donor, recipient, adapters[behavior], prompts, progress=False)
        t1 = time.perf_counter()
        steering = cv.steering_transfer(donor, recipient, adapters[behavior], prompts, progress=False)
        t2 = time.perf_counter()
        scratch = cv.transfer(donor, recipient, adapters[behavior], prompts, start="scratch", progress=False)
        label_free[behavior] = (chosen_lf, t1 - t0, steering, t2 - t1, scratch, time.perf_counter() - t2)
    rows, costs = [], []
    for behavior in behaviors:
        chosen_lf, transfer_s, steering, steering_s, scratch, scratch_s = label_free[behavior]
        variant, best, alpha, select_score = chosen[behavior]
        budget_variant, budget_d, budget_alpha, _ = budget[behavior] or ("none", None, 1.0, None)
        adapter = adapters[behavior]
        paper_alpha = cv.norm_matched_alpha(adapter, paper.converters, paper.donor_profile, paper.recipient_profile)
        shuffled = analysis.shuffled_converters(best.donor_profile, best.recipient_profile, best.converters, seed,
                                                adapter)
        runs = {"recipient_base": (recipient, None), "cv_paper": (recipient, cv.paste(recipient, adapter, paper.converters)),
                "cv_paper_norm_matched": (recipient, cv.paste(recipient, adapter, paper.converters, alpha=paper_alpha)),
                "cv_best": (recipient, cv.paste(recipient, adapter, best.converters, alpha=alpha)),
                "cv_transfer": (recipient, chosen_lf.paste()),
                "distill_scratch": (recipient, scratch.paste()),
                "steering_affine": (recipient, steering.paste()),
                **({"cv_budget": (recipient, cv.paste(recipient, adapter, budget_d.converters, alpha=budget_alpha))}
                   if budget_d is not None else {}),
                "null_random_delta": (recipient, analysis.random_delta_paste(recipient, adapter, best.converters,
                                                                             alpha=alpha, seed=seed)),
                "null_shuffled": (recipient, cv.paste(recipient, adapter, shuffled, alpha=alpha)),
                "recipient_finetune": (recipient, cv.apply_adapter(recipient, zoo.load_adapter(recipient_name, behavior))),
                "donor_adapter": (donor, cv.apply_adapter(donor, adapter))}
        for condition, (model, ctx) in runs.items():
            if ctx is None:
                records = evaluate_outcomes(model, behavior, limit=limit)
            else:
                with ctx:
                    records = evaluate_outcomes(model, behavior, limit=limit)
            for metric, (value, low, high) in bootstrap(behavior, records, n_boot, seed).items():
                rows.append({"donor": donor_name, "recipient": recipient_name, "behavior": behavior,
                             "condition": condition, "metric": metric, "value": value, "ci_low": low,
                             "ci_high": high, "n": len(records)})
        finetune = finetunes[behavior]
        costs.append({"donor": donor_name, "recipient": recipient_name, "behavior": behavior,
                      "cv_paper_s": paper.wall_s, "cv_paper_flops": paper.flops, "cv_best_s": best.wall_s,
                      "cv_best_flops": best.flops, "cv_best_prompts": best.n_prompts,
                      "selection_s": selection_s, "finetune_s": finetune["wall_time_s"],
                      "finetune_flops": finetune["flops"], "best_variant": variant, "alpha_best": alpha,
                      "select_score_best": select_score,
                      "transfer_choice": chosen_lf.choice, "transfer_label": transfer_label(chosen_lf),
                      "alpha_transfer": chosen_lf.alpha,
                      "cv_transfer_flops": chosen_lf.flops, "cv_transfer_s": transfer_s,
                      "alpha_steering": steering.alpha, "steering_flops": steering.flops, "steering_s": steering_s,
                      "distill_flops": scratch.flops, "distill_s": scratch_s,
                      "budget_variant": budget_variant,
                      "cv_budget_flops": budget_d.flops if budget_d is not None else float("nan"),
                      "alpha_paper": paper_alpha,
                      "pasted_to_residual_paper": _norm(donor, recipient, adapter, paper.converters, behavior),
                      "pasted_to_residual_best": _norm(donor, recipient, adapter, best.converters, behavior, alpha)})
    return rows, costs


def _norm(donor, recipient, adapter, converters, behavior, alpha: float = 1.0) -> float:
    frame = analysis.state_delta_fidelity(donor, recipient, adapter, converters, zoo.prompts(behavior, "test")[:32],
                                          alpha=alpha)
    return float(frame[frame.metric == "pasted_to_residual_norm"].value.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 pairs, 48 test prompts per behavior, 7 of the grid's variants")
    parser.add_argument("--limit", type=int, default=None, help="test prompts per behavior (default: all)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--select-limit", type=int, default=64, help="train prompts that score each variant")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    names = zoo.list_models()
    pairs = QUICK_PAIRS if args.quick else [p for p in itertools.permutations(names, 2)]
    limit = 48 if args.quick and args.limit is None else args.limit
    start = time.perf_counter()
    rows, costs = [], []
    for donor, recipient in tqdm(pairs, desc="pairs"):
        r, c = run_pair(donor, recipient, list(zoo.BEHAVIORS), limit, args.select_limit, args.boot, args.seed,
                        QUICK_GRID if args.quick else GRID)
        rows += r
        costs += c
    table, cost = pd.DataFrame(rows), pd.DataFrame(costs)
    summary = summarize_pairs(table, cost)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "transfer.csv", index=False)
    cost.to_csv(args.out / "transfer_costs.csv", index=False)
    summary.to_csv(args.out / "transfer_summary.csv", index=False)
    (args.out / "transfer.md").write_text(markdown(table, cost, summary))
    figure(table, args.out)
    pd.set_option("display.width", 200)
    for behavior in zoo.BEHAVIORS:
        target, side = BEHAVIOR_RATES[behavior]
        sub = table[(table.behavior == behavior) & table.metric.isin([target, side])]
        sub = sub.assign(cell=[f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(sub.value, sub.ci_low, sub.ci_high)])
        print(f"\n== {behavior}: {target} / {side} (95% bootstrap CI) ==")
        print(sub.pivot_table(index=["donor", "recipient", "metric"], columns="condition", values="cell",
                              aggfunc="first").to_string())
    print("\n== costs and chosen variants ==")
    print(cost.to_string(index=False))
    print("\n== summary (median over pairs) ==")
    print(summary.to_string(index=False))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
