"""Figure: causal layer attribution of one zoo transfer — paste single layer pairs, leave one out, cumulative
from the first or last layer — beside the null baselines (random delta of matched norm, shuffled converters,
another behavior's adapter), scored by the behavior logit difference and the behavior rate.

    python analyses/fig_attribution.py --out figures/ [--donor gpt2-4x96 --recipient llama-6x128 --behavior jailbreak]

Writes attribution_<donor>_<recipient>_<behavior>.{png,pdf,csv}. Seeded; a few minutes on CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from commandv_interp import analysis, plotting, zoo
from commandv_interp.zoo.scoring import CONTRAST
from commandv_interp.zoo.scoring import BEHAVIOR_RATES
from commandv_interp.converters import CONVERTER_METHODS
from commandv_interp.pipeline import derive
from commandv_interp.zoo.prompt_sets import PROFILE_SETS, profile_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--donor", default="gpt2-4x96")
    parser.add_argument("--recipient", default="llama-6x128")
    parser.add_argument("--behavior", default="jailbreak", choices=list(zoo.BEHAVIORS))
    parser.add_argument("--method", default="ridge", choices=CONVERTER_METHODS)
    parser.add_argument("--profile-set", default="profile+train", choices=PROFILE_SETS)
    parser.add_argument("--n-prompts", type=int, default=64, help="test prompts scored per run")
    args = parser.parse_args()
    torch.manual_seed(0)
    donor, recipient = zoo.load_model(args.donor), zoo.load_model(args.recipient)
    adapter = zoo.load_adapter(args.donor, args.behavior)
    d = derive(donor, recipient, profile_prompts(args.profile_set), adapter.layers, method=args.method)
    target = BEHAVIOR_RATES[args.behavior][0]

    def rate(model) -> float:
        return zoo.evaluate(model, args.behavior, limit=args.n_prompts)[target]

    evals = zoo.prompts(args.behavior, "test")[: args.n_prompts]
    others = {b: zoo.load_adapter(args.donor, b) for b in zoo.BEHAVIORS if b != args.behavior}
    attribution = analysis.layer_attribution(recipient, adapter, d.converters, evals, CONTRAST[args.behavior], rate)
    nulls = analysis.null_baselines(recipient, adapter, d.converters, evals, CONTRAST[args.behavior], rate,
                                    profiles=(d.donor_profile, d.recipient_profile), other_adapters=others)
    frame = pd.concat([attribution.assign(table="attribution"), nulls.assign(table="null_baselines")])
    stem = args.out / f"attribution_{args.donor}_{args.recipient}_{args.behavior}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    fig, axes = plt.subplots(1, 2, figsize=(16, 4.5))
    for ax, metric in zip(axes, ["logit_diff", "behavior"]):
        plotting.plot_attribution(attribution, metric, baselines=nulls, ax=ax,
                                  title=f"{args.behavior}: {metric}" + (f" ({target} rate)" if metric == "behavior"
                                                                        else f" {CONTRAST[args.behavior]}"))
    fig.suptitle(f"{args.donor} → {args.recipient} ({args.method} converters)")
    fig.tight_layout()
    print("\n".join(str(p) for p in plotting.save_figure(fig, stem)))
    print(nulls[nulls.metric == "behavior"][["condition", "value"]].to_string(index=False))


if __name__ == "__main__":
    main()
