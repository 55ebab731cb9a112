"""Figure: donor × recipient layer similarity (linear CKA on the zoo's profile prompts) with the chosen layer map
drawn on it, for one cross-architecture zoo pair.

    python analyses/fig_similarity.py --out figures/ [--donor gpt2-4x96 --recipient llama-6x128 --metric cka]

Writes similarity_<donor>_<recipient>.{png,pdf,csv}. Seeded; under a minute on CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import commandv_interp as cv
from commandv_interp import analysis, plotting, zoo
from commandv_interp.zoo.prompt_sets import profile_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--donor", default="gpt2-4x96")
    parser.add_argument("--recipient", default="llama-6x128")
    parser.add_argument("--metric", default="cka", choices=["cka", "debiased_cka", "r2", "mutual_knn"])
    parser.add_argument("--assignment", default="argmax", choices=["argmax", "monotone"])
    args = parser.parse_args()
    torch.manual_seed(0)
    prompts = profile_prompts("profile")
    donor = cv.profile(zoo.load_model(args.donor), prompts)
    recipient = cv.profile(zoo.load_model(args.recipient), prompts)
    layer_map = cv.match_layers(donor, recipient, method="similarity", metric=args.metric,
                                assignment=args.assignment)
    frame = analysis.similarity_frame(layer_map)
    stem = args.out / f"similarity_{args.donor}_{args.recipient}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    fig = plotting.plot_similarity(frame, title=f"{args.donor} → {args.recipient}: {args.metric}")
    print("\n".join(str(p) for p in plotting.save_figure(fig, stem)))
    print("chosen map:", layer_map.as_dict())


if __name__ == "__main__":
    main()
