"""Figure: per-layer fidelity of one zoo transfer, one panel per unit: the converters' held-out R² (from the
profiles), the cosines of the converted state, the pasted delta, the delta after a round trip and the downstream
effect with the donor's own, and the norm ratios of the pasted delta and its downstream effect to the donor's.

    python analyses/fig_fidelity.py [--study examples/fidelity.toml] [--out docs/figures]

Writes fidelity.{png,pdf,csv}. Seeded; about a minute on 2 CPU cores. Reads the study file's first pair, behavior,
method, match, profile set and α; scores ``limit`` held-out test prompts.
"""

from __future__ import annotations

import time

import pandas as pd

import _figure
import commandv_interp as cv
from commandv_interp import analysis, plotting, zoo
from commandv_interp.analysis.study import Study
from commandv_interp.app.sweep import ZooWorld
from commandv_interp.zoo.scoring import CONTRAST

STEM = "fidelity"
STUDY = "fidelity"  # examples/fidelity.toml
METRICS = ["heldout_r2_to_recipient", "heldout_r2_to_donor", "state_cosine", "delta_cosine", "backward_cosine",
           "effect_cosine", "delta_norm_ratio", "effect_norm_ratio"]


def caption(frame: pd.DataFrame) -> str:
    """What to see, from the figure's CSV."""
    def span(metric: str) -> str:
        v = frame[frame.metric == metric].value
        return f"{v.min():.2f}–{v.max():.2f}"

    return (f"Per-layer fidelity ({frame.pair.iloc[0]}, {frame.behavior.iloc[0]}): held-out R² donor → recipient "
            f"{span('heldout_r2_to_recipient')}, delta cosine {span('delta_cosine')}, downstream effect cosine "
            f"{span('effect_cosine')}, delta norm ratio {span('delta_norm_ratio')} (1 = the donor's size).")


def main() -> None:
    started = time.perf_counter()
    args = _figure.parser(__doc__, STUDY).parse_args()
    study = Study.from_toml(args.study)
    _figure.seed(study.seed)
    (donor_name, recipient_name), behavior = study.pairs[0], study.behaviors[0]
    method, match, alpha = study.methods[0], study.matches[0], float(study.alphas[0])
    donor, recipient = zoo.load_model(donor_name), zoo.load_model(recipient_name)
    adapter = zoo.load_adapter(donor_name, behavior)
    prompts = ZooWorld().profile_prompts(study.profile_sets[0], behavior, study.profile_sizes[0])
    p_donor, p_recipient = cv.profile(donor, prompts), cv.profile(recipient, prompts)
    layer_map = cv.match_layers(p_donor, p_recipient, match, adapter.layers)
    converters = cv.fit_converters(p_donor, p_recipient, layer_map, method,
                                   adapter if method == "interface" else None)
    evals = zoo.prompts(behavior, "test")[: study.limit]
    frame = pd.concat([
        analysis.converter_fidelity(converters, p_donor, p_recipient),
        analysis.state_delta_fidelity(donor, recipient, adapter, converters, evals, alpha=alpha),
        analysis.downstream_fidelity(donor, recipient, adapter, converters, evals, p_donor, p_recipient,
                                     contrast=CONTRAST[behavior], alpha=alpha)], ignore_index=True)
    frame = frame[frame.metric.isin(METRICS)].assign(pair=f"{donor_name} → {recipient_name}", behavior=behavior)
    fig = plotting.plot_fidelity(frame, METRICS, title=f"{donor_name} → {recipient_name}, {behavior}: per-layer "
                                 f"fidelity ({method} converters, {match} map, α = {alpha:g})")
    _figure.save(fig, frame, args.out, STEM, caption(frame), started)


if __name__ == "__main__":
    main()
