"""Figure: per-layer faithfulness of one zoo transfer — converter fidelity (from the profiles), state and delta
fidelity and downstream effect fidelity (on held-out test prompts) — for each behavior.

    python analyses/fig_fidelity.py --out figures/ [--donor gpt2-4x96 --recipient llama-6x128 --method ridge]

Writes fidelity_<donor>_<recipient>_<method>.{png,pdf,csv}. Seeded; a few minutes on CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from commandv_interp import analysis, plotting, zoo
from commandv_interp.zoo.scoring import CONTRAST
from commandv_interp.converters import CONVERTER_METHODS
from commandv_interp.pipeline import derive
from commandv_interp.zoo.prompt_sets import PROFILE_SETS, profile_prompts

PANELS = {"converter": ["heldout_r2_to_donor", "heldout_r2_to_recipient", "round_trip_error_recipient", "cka"],
          "state/delta": ["state_cosine", "delta_cosine", "delta_norm_ratio", "backward_cosine",
                          "pasted_to_residual_norm"],
          "downstream": ["effect_cosine", "effect_norm_ratio"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--donor", default="gpt2-4x96")
    parser.add_argument("--recipient", default="llama-6x128")
    parser.add_argument("--method", default="ridge", choices=CONVERTER_METHODS)
    parser.add_argument("--profile-set", default="profile+train", choices=PROFILE_SETS)
    parser.add_argument("--match", default="depth", choices=["depth", "similarity"])
    parser.add_argument("--n-prompts", type=int, default=64, help="test prompts per behavior")
    args = parser.parse_args()
    torch.manual_seed(0)
    donor, recipient = zoo.load_model(args.donor), zoo.load_model(args.recipient)
    layers = zoo.load_adapter(args.donor, "refusal").layers
    d = derive(donor, recipient, profile_prompts(args.profile_set), range(donor.n_layers), match=args.match,
               method=args.method)
    converters = d.converters
    frames = [analysis.converter_fidelity(converters, d.donor_profile, d.recipient_profile).assign(behavior="all")]
    for behavior in zoo.BEHAVIORS:
        adapter = zoo.load_adapter(args.donor, behavior)
        evals = zoo.prompts(behavior, "test")[: args.n_prompts]
        frames.append(analysis.state_delta_fidelity(donor, recipient, adapter, converters, evals)
                      .assign(behavior=behavior))
        frames.append(analysis.downstream_fidelity(donor, recipient, adapter, converters, evals, d.donor_profile,
                                                   d.recipient_profile, contrast=CONTRAST[behavior])
                      .assign(behavior=behavior))
    frame = pd.concat(frames, ignore_index=True)
    stem = args.out / f"fidelity_{args.donor}_{args.recipient}_{args.method}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    fig, axes = plt.subplots(len(zoo.BEHAVIORS), 3, figsize=(15, 3.6 * len(zoo.BEHAVIORS)), squeeze=False)
    adapter_layers = set(layers)
    for row, behavior in enumerate(zoo.BEHAVIORS):
        for col, (panel, metrics) in enumerate(PANELS.items()):
            source = frame[frame.behavior == ("all" if panel == "converter" else behavior)]
            if panel == "converter":
                source = source[source.donor_layer.isin(adapter_layers)]
            plotting.plot_fidelity(source[source.metric.isin(metrics)], metrics,
                                   title=f"{behavior}: {panel}", ax=axes[row][col])
    fig.suptitle(f"{args.donor} → {args.recipient} ({args.method} converters, {args.match} map)")
    fig.tight_layout()
    print("\n".join(str(p) for p in plotting.save_figure(fig, stem)))


if __name__ == "__main__":
    main()
