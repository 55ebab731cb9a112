"""Figure: α dose–response. The behavior's target rate (top) and its side effect, false refusal (bottom),
against the paste scale α, one column per donor → recipient pair, with bootstrap 95% CI bands and the recipient
base, donor + adapter and recipient finetune rates as reference lines.

    python analyses/fig_alpha.py [--study examples/alpha_dose_response.toml] [--out docs/figures]

Writes alpha_dose_response.{png,pdf,csv}. Seeded; about 2 minutes on 2 CPU cores (cached under results/).
"""

from __future__ import annotations


import pandas as pd

import _figure
from commandv_interp import plotting

STEM = "alpha_dose_response"
STUDY = "alpha_dose_response"  # examples/alpha_dose_response.toml


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    parts = []
    for pair, sub in frame.groupby("pair", sort=False):
        target, side = _figure.rates(sub.behavior.iloc[0])
        t = _figure.at(sub, target).sort_values("value")
        best = t.iloc[-1]
        worst_side = _figure.at(sub, side).value.max()
        parts.append(f"{pair} peaks at {best.value:.2f} {plotting.label(target).split(' (')[0]} at α = "
                     f"{best.alpha_used:g} (false refusal ≤ {worst_side:.2f})" if best.value > 0.1 else
                     f"{pair} never transfers (≤ {best.value:.2f} at every α)")
    return f"α dose–response ({frame.behavior.iloc[0]}): " + "; ".join(parts) + "."


def main() -> None:
    args, study, behavior, frame, started = _figure.first_behavior(__doc__, STUDY)
    fig = plotting.plot_dose_response(frame, _figure.rates(behavior), x="alpha_used", panel="pair",
                                      references=_figure.references(frame),
                                      title=f"{behavior}: rates against the paste scale α ({study.methods[0]} "
                                            f"converters, {study.matches[0]} map, n = {study.limit} test prompts)")
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
