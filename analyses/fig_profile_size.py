"""Figure: profile-set size N. The behavior's target rate and false refusal against the number of profile prompts
the converters are fitted on (log2 axis), one panel per converter method, one line per α rule (α = 1, or the norm-matched α
that gives the pasted delta the donor's norm), with bootstrap 95% CI bands and the reference lines.

    python analyses/fig_profile_size.py [--study examples/profile_size.toml] [--out docs/figures]

Writes profile_size.{png,pdf,csv}. Seeded; a couple of minutes on 2 CPU cores (cached under results/).
"""

from __future__ import annotations


import pandas as pd

import _figure
from commandv_interp import plotting
from commandv_interp.app.sweep import ZooWorld

STEM = "profile_size"
STUDY = "profile_size"  # examples/profile_size.toml


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    target, _ = _figure.rates(frame.behavior.iloc[0])
    parts = []
    for setting, sub in _figure.at(frame, target).groupby(["converters", "alpha_rule"], sort=False):
        works = sub[sub.value >= 0.5].profile_size
        parts.append(f"{', '.join(setting)}: ≥ 0.5 at N = {', '.join(str(int(n)) for n in sorted(works)) or 'none'}")
    return (f"Profile-set size ({frame.pair.iloc[0]}, {frame.behavior.iloc[0]} {target}, of N = "
            f"{', '.join(str(int(n)) for n in sorted(set(frame.profile_size)))}): " + "; ".join(parts) + ".")


def main() -> None:
    args, study, behavior, frame, started = _figure.first_behavior(__doc__, STUDY)
    everything = {s: len(ZooWorld().profile_prompts(s, behavior, None)) for s in set(frame.profile_set)}
    frame["profile_size"] = [everything[s] if pd.isna(n) else int(n)
                             for s, n in zip(frame.profile_set, frame.profile_size)]  # "all" as its count
    frame["converters"] = frame.method + " converters"
    frame["alpha_rule"] = ["norm-matched α" if a == "norm" else f"α = {a}" for a in frame.alpha.astype(str)]
    fig = plotting.plot_dose_response(frame, _figure.rates(behavior), x="profile_size", panel="converters", hue="alpha_rule",
                                      references=_figure.references(frame), logx=True,
                                      title=f"{study.pairs[0][0]} → {study.pairs[0][1]}, {behavior}: rates against the profile-set size N "
                                            f"({study.profile_sets[0]} prompts)")
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
