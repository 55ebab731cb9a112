"""App (cli): the label-free transfer, study and analysis subcommands (``commandv transfer``, ``sweep``,
``analyze``), registered on the ``commandv`` app of :mod:`~commandv_interp.app.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from commandv_interp.app.cli import (AdapterArg, BackendOpt, DebugOpt, Globals, JsonOpt, PromptsArg, WorldOpt,
                                     ZooRootOpt, _adapter, _command, _emit, _model, _out_folder, _prompts, app)
from commandv_interp.app.edit_kind import donor_edit

__all__: list[str] = []

_ANSWER_TOKENS = 8  # the donor answers' length in cv.transfer and the attribution (their max_new_tokens default)


@_command(app, "transfer")
def transfer_cmd(
    donor: Annotated[str, typer.Argument(metavar="DONOR", help="Donor checkpoint directory or zoo model name.")],
    recipient: Annotated[str, typer.Argument(metavar="RECIPIENT",
                                             help="Recipient checkpoint directory or zoo model name.")],
    adapter: AdapterArg,
    prompts: PromptsArg,
    out: Annotated[Path, typer.Option(help="Folder to write: compiled/, transfer.json, candidates.csv, "
                                           "report.md, converters and the adapter.")],
    limit: Annotated[int | None, typer.Option(min=16, help="Use only the first LIMIT prompts.")] = 128,
    polish_steps: Annotated[int, typer.Option(min=0, help="At most this many distillation steps on the chosen "
                                                           "paste (0: the paste as it is).")] = 12,
    start: Annotated[str, typer.Option(help="paste (search, then polish) or scratch (the distillation baseline: "
                                            "polish a fresh adapter, no paste).")] = "paste",
    output: Annotated[str, typer.Option("--as", help="reft (compiled/ as a pyreft adapter) or lora (also lora/, a "
                                                     "PEFT LoRA of the recipient distilled from the donor+edit).")
                      ] = "reft",
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Label-free transfer: choose converters, layers and alpha by agreement with the donor+adapter, and compile.

    PROMPTS are unlabeled prompts of the adapter's task (e.g. its training inputs). ADAPTER_FOLDER may also be a
    PEFT LoRA folder or a steering-vector .safetensors file (its kind is named in one line).

    Example: commandv transfer llama-6x128 gpt2-4x96 zoo:llama-6x128:jailbreak zoo:jailbreak:train --out jb/
    """
    import commandv_interp as cv

    g = Globals(json_output, debug, zoo_root, world)
    _out_folder(out, donor, recipient, adapter, prompts, command="transfer", zoo_root=g.zoo_root)
    from commandv_interp.pipeline.label_free import STARTS
    from commandv_interp.pipeline.search import check_transfer_prompts
    from commandv_interp.types import check_choice

    check_choice("--start", start, STARTS)
    check_choice("--as", output, ("reft", "lora"))

    texts = check_transfer_prompts(_prompts(g, prompts)[:limit])  # cheap inputs first: fail before loading the models
    # pyreft, PEFT LoRA or steering vector, told apart by the contents
    donor_adapter, kind_line = donor_edit(adapter, donor, lambda spec: _adapter(g, spec))
    if not g.json:
        typer.echo(kind_line)
    from commandv_interp.access.limits import check_models_fit

    models = _model(g, donor, backend), _model(g, recipient, backend)
    check_models_fit(models, texts, new_tokens=_ANSWER_TOKENS)  # prompt + the donor's answer, before any work
    result = cv.transfer(*models, donor_adapter, texts, polish_steps=polish_steps, start=start, progress=not g.json)
    result.save(out)
    if output == "lora":  # the recipient LoRA in PEFT's format, distilled from the donor+edit's whole answers
        result.to_peft(out / "lora", models[0], texts, progress=not g.json)
    native = result.compile()
    cv.save_adapter(native, out / "compiled")
    scored = result.candidates
    best = (scored[scored.n_scoring == scored.n_scoring.max()]
            .sort_values(["criterion", "lift"], ascending=False).head(8))
    report = [f"# Transfer: {donor} → {recipient}", "",
              f"Chosen: `{result.choice}` at α = {result.alpha:.3g}, positions `{result.positions}`, layer map "
              f"{result.layer_map}; {len(texts)} prompts, {result.wall_s:.0f} s, {result.flops:.2e} FLOPs.", "",
              *(["The chosen paste was then polished: trained for a few steps to reproduce the donor+adapter's "
                 "answers (`compiled/` holds the polished adapter).", ""] if result.polished is not None else []),
              "The criterion is the share of the donor+adapter's response tokens the pasted recipient reproduces "
              "greedily on held-out prompts (balanced over prompts the adapter changes and prompts it leaves alone).",
              "", "| candidate | α | criterion | lift |", "|---|---|---|---|"]
    report += [f"| {r.candidate} | {r.alpha:.3g} | {r.criterion:.3f} | {r.lift:.3f} |" for r in best.itertuples()]
    (out / "report.md").write_text("\n".join(report) + "\n")
    _emit(g, {"out": str(out), "choice": result.choice, "alpha": result.alpha, "layer_map": result.layer_map,
              "flops": result.flops, "wall_s": result.wall_s, "edit": kind_line,
              "lora": str(out / "lora") if output == "lora" else None},
          f"wrote {out}: `{result.choice}` at alpha {result.alpha:.3g}, compiled adapter in {out / 'compiled'}; "
          "best candidates:", [{"candidate": r.candidate, "alpha": round(r.alpha, 4), "criterion": round(r.criterion, 4)}
                               for r in best.itertuples()])


@_command(app, "sweep")
def sweep_cmd(
    study: Annotated[Path, typer.Argument(metavar="STUDY", help="Study file (TOML; see examples/*.toml).")],
    out: Annotated[Path, typer.Option(help="Folder for results.csv and the cache (a re-run resumes).")],
    json_output: JsonOpt = False, debug: DebugOpt = False, world: WorldOpt = "main",
) -> None:
    """Run an ablation study on the zoo: every cell of the study's grid, cached, with bootstrap CIs.

    Example: commandv sweep examples/alpha_dose_response.toml --out results/alpha

    Example (resume after an interruption, or after adding axis values): the same command again.
    """
    from commandv_interp.app.sweep import run_zoo_study

    g = Globals(json_output, debug, world=world)
    _out_folder(out, study, command="sweep")
    table = run_zoo_study(study, out, progress=not g.json, world=g.world)
    cells = table.drop(columns=["metric", "value", "ci_low", "ci_high", "n"]).drop_duplicates()
    _emit(g, {"out": str(out), "cells": len(cells), "rows": len(table)},
          f"wrote {out / 'results.csv'}: {len(cells)} cells, {len(table)} rows")


@_command(app, "analyze")
def analyze_cmd(
    transfer_folder: Annotated[Path, typer.Argument(metavar="TRANSFER", help="Folder written by `commandv transfer`.")],
    donor: Annotated[str, typer.Argument(metavar="DONOR", help="Donor checkpoint directory or zoo model name.")],
    recipient: Annotated[str, typer.Argument(metavar="RECIPIENT",
                                             help="Recipient checkpoint directory or zoo model name.")],
    prompts: PromptsArg,
    out: Annotated[Path, typer.Option(help="Folder for the per-layer CSVs, figures and report.md.")],
    limit: Annotated[int, typer.Option(min=4, help="Use the first LIMIT prompts.")] = 64,
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Per-layer faithfulness report of one transfer: state/delta fidelity and layer attribution, as CSVs, figures
    and report.md.

    Example: commandv analyze jb/ llama-6x128 gpt2-4x96 zoo:jailbreak:test --out jb-analysis/
    """
    from commandv_interp.app.report import analyze_transfer
    from commandv_interp.pipeline import load_transfer

    g = Globals(json_output, debug, zoo_root, world)
    _out_folder(out, transfer_folder, donor, recipient, prompts, command="analyze", zoo_root=g.zoo_root)
    chosen, texts = load_transfer(transfer_folder), _prompts(g, prompts)[:limit]  # before loading the models
    from commandv_interp.access.limits import check_models_fit

    models = _model(g, donor, backend), _model(g, recipient, backend)
    check_models_fit(models, texts, new_tokens=_ANSWER_TOKENS)  # prompt + the donor's answer, before any work
    files = analyze_transfer(chosen, *models, texts, out)
    _emit(g, {"out": str(out), "files": [str(f) for f in files]}, f"wrote {out / 'report.md'} and {len(files)} files")
