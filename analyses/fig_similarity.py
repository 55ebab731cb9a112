"""Figure: donor × recipient layer similarity (linear CKA on the study's profile prompts) for each pair of the
layer-map study, every cell annotated, the layer map the similarity search chooses boxed, a collapsed map flagged.

    python analyses/fig_similarity.py [--study examples/layer_map.toml] [--out docs/figures] [--metric cka]

Writes similarity.{png,pdf,csv}. Seeded; under a minute on 2 CPU cores.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import pandas as pd

import _figure
import commandv_interp as cv
from commandv_interp import analysis, plotting, zoo
from commandv_interp.analysis.study import Study
from commandv_interp.app.sweep import ZooWorld

STEM = "similarity"
STUDY = "layer_map"  # examples/layer_map.toml: its pairs, behavior and profile prompts


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    parts = []
    for pair, sub in frame.groupby("pair", sort=False):
        chosen = sub[sub.chosen.astype(bool)].sort_values("donor_layer")
        parts.append(f"{pair} maps " + ", ".join(f"{d}→{r}" for d, r in zip(chosen.donor_layer,
                                                                             chosen.recipient_layer))
                     + (" (collapsed)" if chosen.recipient_layer.nunique() == 1 and len(chosen) > 1 else ""))
    return f"Layer similarity ({frame.metric.iloc[0]}), boxed = chosen map: " + "; ".join(parts) + "."


def main() -> None:
    started = time.perf_counter()
    parser = _figure.parser(__doc__, STUDY)
    parser.add_argument("--metric", default="cka", choices=["cka", "debiased_cka", "r2", "mutual_knn"])
    args = parser.parse_args()
    study = Study.from_toml(args.study)
    _figure.seed(study.seed)
    behavior = study.behaviors[0]
    prompts = ZooWorld().profile_prompts(study.profile_sets[0], behavior, study.profile_sizes[0])
    frames = []
    fig, axes = plt.subplots(1, len(study.pairs), figsize=(5.6 * len(study.pairs), 4.6), squeeze=False)
    for ax, (donor, recipient) in zip(axes[0], study.pairs):
        adapter = zoo.load_adapter(donor, behavior)
        p_donor = cv.profile(zoo.load_model(donor), prompts)
        p_recipient = cv.profile(zoo.load_model(recipient), prompts)
        layer_map = cv.match_layers(p_donor, p_recipient, method="similarity", metric=args.metric,
                                    donor_layers=adapter.layers)
        frame = analysis.similarity_frame(layer_map).assign(pair=f"{donor} → {recipient}")
        depth = cv.match_layers(p_donor, p_recipient, method="depth", donor_layers=adapter.layers)
        plotting.plot_similarity(frame, title=f"{donor} → {recipient}", ax=ax, other_map=depth.pairs)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    fig.suptitle(f"Layer similarity ({plotting.label(args.metric)}) on the {behavior} {study.profile_sets[0]} "
                 "prompts; red boxes: the map the similarity search chooses for the adapter's layers, dashed: the "
                 "relative-depth map")
    fig.tight_layout()
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
