"""Figure: converter method. The behavior's target rate and false refusal for each converter fitter (and the
label-free ``transfer`` choice) at α = 1, one column per pair: points with bootstrap 95% CIs, reference lines
for the recipient base, donor + adapter and recipient finetune.

    python analyses/fig_method.py [--study examples/converter_method.toml] [--out docs/figures]

Writes converter_method.{png,pdf,csv}. Seeded; a few minutes on 2 CPU cores (cached under results/).
"""

from __future__ import annotations


import pandas as pd

import _figure
from commandv_interp import plotting

STEM = "converter_method"
STUDY = "converter_method"  # examples/converter_method.toml


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    parts = []
    for pair, sub in frame.groupby("pair", sort=False):
        target, side = _figure.rates(sub.behavior.iloc[0])
        t, f = _figure.at(sub, target), _figure.at(sub, side)
        works = [m for m, v in zip(t.method, t.value) if v >= 0.5]
        harms = [m for m, v in zip(f.method, f.value) if v >= 0.25]
        parts.append(f"{pair}: {', '.join(works) or 'no method'} reach{'es' if len(works) == 1 else ''} ≥ 0.5 "
                     f"{target}" + (f", {', '.join(harms)} refuse ≥ 0.25 of benign prompts" if harms else ""))
    return f"Converter method ({frame.behavior.iloc[0]}, α = 1 unless chosen): " + "; ".join(parts) + "."


def main() -> None:
    args, study, behavior, frame, started = _figure.first_behavior(__doc__, STUDY)
    fig = plotting.plot_comparison(frame, _figure.rates(behavior), x="method", panel="pair", order=study.methods,
                                   references=_figure.references(frame),
                                   title=f"{behavior}: converter method ({study.matches[0]} map, α = "
                                         f"{study.alphas[0]:g}; transfer picks its own)")
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
