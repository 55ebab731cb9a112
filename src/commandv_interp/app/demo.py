"""App (demo): consumes a donor → recipient pair of the embedded zoo, produces the one-command offline demo —
a transfer table per behavior, the compute of the edit vs a direct finetune, per-layer faithfulness figures and a
Markdown report.

Runs on CPU, offline, in a few minutes. By default each behavior's edit is chosen by the label-free
:func:`~commandv_interp.pipeline.transfer` (both models through nnsight), then scored with labels on held-out test
prompts; every row and compute line says what was applied (:mod:`~commandv_interp.pipeline.labels`: a Command-V
paste, a paste plus distillation steps, or distillation only). The report analyzes that final edit layer by layer
(:func:`~commandv_interp.analysis.final_edit_analysis`: what the polish changed, which layers carry the behavior);
the faithfulness of the paste before its polish reads the donor through TransformerLens hook points. With a
converter ``method`` the donor is profiled through TransformerLens instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from commandv_interp import analysis, plotting
from commandv_interp.correspondence import similarity_matrix
from commandv_interp.io import atomic_write
from commandv_interp.zoo import load_adapter, load_model, prompts
from commandv_interp.zoo.scoring import BEHAVIOR_RATES
from commandv_interp.app.final_edit import FINAL_EDIT_INTRO, final_edit_section
from commandv_interp.app.transfer_table import CONDITIONS, transfer_rows
from commandv_interp.pipeline.labels import transfer_label
from commandv_interp.pipeline import ProfilePair, Transfer, derive, profile_pair, transfer
from commandv_interp.zoo.prompt_sets import profile_prompts
from commandv_interp.zoo.world import Behavior

__all__ = ["run_demo", "format_transfer_tables", "DEFAULT_PAIR"]

DEFAULT_PAIR = ("llama-6x128", "gpt2-4x96")  # cross-architecture and cross-tokenizer (word → BPE)
TRANSFER_PROMPTS = 128  # unlabeled training prompts per behavior handed to cv.transfer
ANALYSIS_PROMPTS = 64  # held-out test prompts of the per-layer analyses


def format_transfer_tables(table: pd.DataFrame) -> str:
    """Markdown: one table per behavior with the four conditions as rows (each named by its ``label``: what was
    applied) and the behavior's rates as columns, then the compute of the edit vs the direct finetune."""
    out = []
    for behavior, group in table.groupby("behavior", sort=False):
        metrics = list(BEHAVIOR_RATES[behavior])
        out += [f"### {behavior}", "", "| condition | " + " | ".join(metrics) + " |",
                "|---|" + "---|" * len(metrics)]
        rates = group[~group.metric.isin(["wall_s", "flops"])]
        for condition in CONDITIONS:
            sub = rates[rates.condition == condition]
            vals = sub.set_index("metric")["value"]
            out.append(f"| {sub.label.iloc[0]} | " + " | ".join(f"{vals.get(m, float('nan')):.2f}" for m in metrics)
                       + " |")
        applied = rates[rates.condition == "command_v"].label.iloc[0].removeprefix("recipient + ")
        cost = group[group.metric.isin(["wall_s", "flops"])].set_index(["condition", "metric"])["value"]
        cv_s, ft_s = cost[("command_v", "wall_s")], cost[("recipient_finetune", "wall_s")]
        cv_f, ft_f = cost[("command_v", "flops")], cost[("recipient_finetune", "flops")]
        out += ["", f"compute: {applied} {cv_s:.1f} s / {cv_f:.2e} FLOPs (the whole derivation, selection included) "
                    "vs direct "
                    f"finetune {ft_s:.1f} s / {ft_f:.2e} FLOPs → ratio "
                    f"{cv_s / ft_s:.3f} (time), {cv_f / ft_f:.4f} (FLOPs)", ""]
    return "\n".join(out)


def run_demo(donor: str = DEFAULT_PAIR[0], recipient: str = DEFAULT_PAIR[1],
             behaviors: Sequence[Behavior] = ("refusal", "jailbreak", "cot"), method: str = "transfer",
             match: str = "depth", profile_set: str = "task", out: str | Path = "commandv_demo",
             limit: int | None = None, progress: bool = True, alpha: float = 1.0, chain: bool = False
             ) -> pd.DataFrame:
    """Run the demo and write ``report.md``, ``transfer.csv``, ``faithfulness.csv`` and figures into ``out``.

    Args:
        donor, recipient: zoo model names (must differ).
        behaviors: which behaviors to paste.
        method: ``transfer`` (:func:`~commandv_interp.pipeline.transfer` per behavior, label-free, on the behavior's
            first 128 training prompts; ``match``, ``profile_set``, ``alpha`` and ``chain`` are then unused), or a
            converter method (``interface`` is adapter-aware, fitted per behavior); match: ``depth`` or
            ``similarity``; profile_set: see :func:`commandv_interp.zoo.prompt_sets.profile_prompts` (``task`` is
            per behavior).
        limit: score only the first ``limit`` test prompts of each behavior.
        alpha: the paste scale.
        chain: fit ``interface`` converters layer after layer under the paste at ``alpha``
            (:func:`~commandv_interp.converters.fit_chained_converters`).

    Returns:
        The tidy transfer table (also in ``transfer.csv``).
    """
    if donor == recipient:
        raise ValueError(f"donor and recipient must be different zoo models, got {donor!r} twice")
    if chain and method != "interface":
        raise ValueError(f"chain=True chains interface converters; method is {method!r}: use method='interface'")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    donor_tl = load_model(donor, backend="transformer_lens")  # profiled through TransformerLens hook points
    donor_nn, recipient_nn = load_model(donor), load_model(recipient)
    adapters = {b: load_adapter(donor, b) for b in behaviors}
    layers = adapters[behaviors[0]].layers
    if method == "transfer":
        derivations = {b: transfer(donor_nn, recipient_nn, adapters[b], prompts(b, "train")[:TRANSFER_PROMPTS],
                                   progress=progress) for b in behaviors}
    elif method == "interface" or profile_set == "task":  # converters or profile prompts per behavior
        pairs: dict[str | None, ProfilePair] = {}  # profiled once per prompt set, shared across behaviors
        derivations = {}
        for b in behaviors:
            key = b if profile_set == "task" else None
            if key not in pairs:
                pairs[key] = profile_pair(donor_tl, recipient_nn, profile_prompts(profile_set, key), progress)
            derivations[b] = derive(donor_tl, recipient_nn, pairs[key], layers, match=match, method=method,
                                    adapter=adapters[b] if method == "interface" else None,
                                    chain_alpha=alpha if chain else None)
    else:
        shared = derive(donor_tl, recipient_nn, profile_prompts(profile_set), layers, match=match, method=method,
                        progress=progress)
        derivations = {b: shared for b in behaviors}
    table = transfer_rows(donor_nn, recipient_nn, derivations, behaviors, alpha=alpha, limit=limit)
    atomic_write(out / "transfer.csv", lambda p: table.to_csv(p, index=False))
    faith, figures = _faithfulness(donor_tl, recipient_nn, derivations, behaviors, out, alpha)
    first = derivations[behaviors[0]]
    final_lines: list[str] = []
    if method == "transfer":
        setup = "; ".join(f"{b}: **{transfer_label(d)}** (`{d.choice}`, layer map {d.layer_map})"
                          for b, d in derivations.items())
        header = (f"Label-free `cv.transfer` per behavior on {TRANSFER_PROMPTS} unlabeled training prompts ({setup}); "
                  f"test prompts per behavior: {limit or 'all'}. Each table's edit row names what was applied; the "
                  "final edit is analyzed layer by layer below, then the faithfulness of the paste before its polish "
                  "(none where distillation only was chosen).")
        final_lines = _final_edit_section(donor_nn, recipient_nn, adapters, derivations, behaviors, out)
    else:
        header = (f"Converters: `{method}`{' (chained)' if chain else ''}; α = {alpha:g}; layer matching: `{match}`; "
                  f"profile prompts: `{profile_set}` ({first.n_prompts}); layer map {first.layer_map.as_dict()}; "
                  f"test prompts per behavior: {limit or 'all'}.")
    report = [f"# Command-V demo: {donor} → {recipient}", "", header, "", format_transfer_tables(table), "",
              *final_lines, "## Per-layer faithfulness" + (" of the paste before its polish" if final_lines else ""),
              ""]
    report += [f"![{f.stem}]({f.name})" for f in figures]
    report += ["", f"Total demo time: {time.perf_counter() - start:.0f} s."]
    atomic_write(out / "report.md", lambda p: p.write_text("\n".join(report) + "\n"))
    return table


def _final_edit_section(donor, recipient, adapters, derivations, behaviors, out: Path) -> list[str]:
    """The report's analysis of each behavior's final edit on held-out test prompts: ``final_edit.csv``, a figure
    per behavior and a per-layer table (which layers carry the behavior; what the polish changed)."""
    lines, frames = ["## The final edit, layer by layer", "",
                     f"On {ANALYSIS_PROMPTS} held-out test prompts per behavior. {FINAL_EDIT_INTRO}", ""], []
    for behavior in behaviors:
        frame, section, _ = final_edit_section(donor, recipient, adapters[behavior], derivations[behavior],
                                               prompts(behavior, "test")[:ANALYSIS_PROMPTS], out, behavior)
        frames.append(frame.assign(behavior=behavior))
        lines += section
    final = pd.concat(frames, ignore_index=True)
    atomic_write(out / "final_edit.csv", lambda p: final.to_csv(p, index=False))
    return lines


def _faithfulness(donor, recipient, derivations, behaviors, out: Path, alpha: float
                  ) -> tuple[pd.DataFrame, list[Path]]:
    frames = []
    for behavior in behaviors:
        d = derivations[behavior]
        if getattr(d, "donor_profile", None) is not None and d.recipient_profile is not None:
            frames.append(analysis.converter_fidelity(d.converters, d.donor_profile, d.recipient_profile)
                          .assign(behavior=behavior))
        if d.converters is None:  # the transfer chose the distillation from scratch: no paste to break down
            continue
        pasted = d.adapter if isinstance(d, Transfer) else load_adapter(donor.name, behavior)
        frame = analysis.state_delta_fidelity(donor, recipient, pasted, d.converters, prompts(behavior, "test")[:64],
                                              alpha=getattr(d, "alpha", alpha))
        frames.append(frame.assign(behavior=behavior))
    faith = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["behavior"])
    atomic_write(out / "faithfulness.csv", lambda p: faith.to_csv(p, index=False))
    figures = []
    first = derivations[behaviors[0]]
    if getattr(first, "donor_profile", None) is not None and first.recipient_profile is not None:
        layer_map = first.layer_map
        if layer_map.similarity is None:  # a depth map: show its pairs on the CKA matrix of the same profiles
            rows = [d for d, _ in layer_map.pairs]
            layer_map = dataclasses.replace(
                layer_map, similarity=similarity_matrix(first.donor_profile, first.recipient_profile, "cka", rows),
                metric="cka", donor_layers=tuple(rows), recipient_layers=tuple(first.recipient_profile.layers))
        fig = plotting.plot_similarity(analysis.similarity_frame(layer_map))
        figures.append(plotting.save_figure(fig, out / "similarity")[0])
    for behavior in [b for b in behaviors if (faith.behavior == b).any()]:
        fig = plotting.plot_fidelity(faith[faith.behavior == behavior],
                                     ["state_cosine", "delta_cosine", "backward_cosine", "pasted_to_residual_norm"],
                                     title=f"{behavior}: state and delta fidelity")
        figures.append(plotting.save_figure(fig, out / f"fidelity_{behavior}")[0])
    import matplotlib.pyplot as plt

    plt.close("all")
    return faith, figures
