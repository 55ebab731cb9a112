"""Figure: layer-map choice. The behavior's target rate and false refusal with the donor layers mapped by relative
depth or by CKA similarity search, one column per pair: points with bootstrap 95% CIs and reference lines.

    python analyses/fig_layer_map.py [--study examples/layer_map.toml] [--out docs/figures]

Writes layer_map.{png,pdf,csv}. Seeded; about a minute on 2 CPU cores (cached under results/). The similarity
matrices behind the search: analyses/fig_similarity.py.
"""

from __future__ import annotations


import pandas as pd

import _figure
from commandv_interp import plotting

STEM = "layer_map"
STUDY = "layer_map"  # examples/layer_map.toml


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    parts = []
    for pair, sub in frame.groupby("pair", sort=False):
        t = _figure.at(sub, _figure.rates(sub.behavior.iloc[0])[0]).set_index("match").value
        parts.append(f"{pair} depth {t.get('depth', float('nan')):.2f} vs similarity "
                     f"{t.get('similarity', float('nan')):.2f}")
    return f"Layer map ({frame.behavior.iloc[0]} target rate): " + "; ".join(parts) + "."


def main() -> None:
    args, study, behavior, frame, started = _figure.first_behavior(__doc__, STUDY)
    fig = plotting.plot_comparison(frame, _figure.rates(behavior), x="match", panel="pair", order=study.matches,
                                   references=_figure.references(frame),
                                   title=f"{behavior}: layer map by relative depth or CKA similarity "
                                         f"({study.methods[0]} converters, α = {study.alphas[0]:g})")
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
