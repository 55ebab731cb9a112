"""App (cli): the label-free transfer, study and analysis subcommands (``commandv transfer``, ``sweep``,
``analyze``), registered on the ``commandv`` app of :mod:`~commandv_interp.app.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from commandv_interp.app.cli_app import (BackendOpt, DebugOpt, Globals, JsonOpt, PromptsArg, WorldOpt,
                                         ZooRootOpt, _adapter, _command, _emit, _model, _out_folder, _prompts, app)
from commandv_interp.app.edit_kind import donor_edit

__all__: list[str] = []

_ANSWER_TOKENS = 8  # the donor answers' length in cv.transfer and the attribution (their max_new_tokens default)


@_command(app, "transfer")
def transfer_cmd(
    donor_name: Annotated[str | None, typer.Argument(metavar="DONOR", show_default=False,
                                                     help="Donor checkpoint directory or zoo model name.")] = None,
    recipient_name: Annotated[str | None, typer.Argument(metavar="RECIPIENT", show_default=False,
                                                         help="Recipient checkpoint directory or zoo model name.")
                              ] = None,
    adapter: Annotated[str | None, typer.Argument(metavar="ADAPTER_FOLDER", show_default=False,
                                                  help="pyreft adapter folder or zoo:<model>:<behavior>.")] = None,
    prompts: Annotated[str | None, typer.Argument(metavar="PROMPTS", show_default=False,
                                                  help="Prompts file (.txt/.json/.jsonl) or zoo:<behavior>:<split>.")
                       ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write: compiled/, transfer.json, candidates.csv, "
                                                  "report.md, the donor's adapter, the paste and manifest.json.")
                   ] = None,
    replay: Annotated[Path | None, typer.Option(
        help="Re-run the transfer saved in this folder with its recorded settings, on the inputs given (or, with "
             "none given, the ones it records), and report whether the same choice and the same adapter (by "
             "digest) come out; exit code 1 when they do not. Writes nothing.")] = None,
    limit: Annotated[int | None, typer.Option(min=16, help="Use only the first LIMIT prompts.")] = 128,
    polish_steps: Annotated[int, typer.Option(min=0, help="At most this many distillation steps on the chosen "
                                                           "paste (0: the paste as it is; its budget and patience "
                                                           "stop it first).")] = 256,
    start: Annotated[str, typer.Option(help="paste (search, then polish) or scratch (the distillation baseline: "
                                            "polish a fresh adapter, no paste).")] = "paste",
    scale_search: Annotated[bool, typer.Option("--scale-search/--no-scale-search", help="Score the polished "
                                               "adapter at a few scales and keep the middle of the best range.")
                            ] = True,
    output: Annotated[str, typer.Option("--as", help="reft (compiled/ as a pyreft adapter) or lora (also lora/, a "
                                                     "PEFT LoRA of the recipient distilled from the donor+edit).")
                      ] = "reft",
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Label-free transfer: choose converters and layers by agreement with the donor+adapter, polish, and compile.

    PROMPTS are unlabeled prompts of the adapter's task (e.g. its training inputs). ADAPTER_FOLDER may also be a
    PEFT LoRA folder or a steering-vector .safetensors file (its kind is named in one line).

    Example: commandv transfer llama-6x128 gpt2-4x96 zoo:llama-6x128:jailbreak zoo:jailbreak:train --out jb/

    Example (re-run it and check that it reproduces): commandv transfer --replay jb/
    """
    g = Globals(json_output, debug, zoo_root, world)
    inputs = (donor_name, recipient_name, adapter, prompts)
    if replay is not None:
        if out is not None:
            raise ValueError("--replay writes nothing; drop --out (or run the transfer again with --out)")
        _replay(g, replay, inputs, limit, backend)
        return
    if any(x is None for x in inputs) or out is None:
        raise ValueError("transfer needs DONOR RECIPIENT ADAPTER_FOLDER PROMPTS and --out FOLDER (or --replay FOLDER)")
    _out_folder(out, *inputs, command="transfer", zoo_root=g.zoo_root)
    from commandv_interp.pipeline.config import STARTS, TransferConfig
    from commandv_interp.pipeline.search import check_transfer_prompts
    from commandv_interp.types import check_choice

    check_choice("--start", start, STARTS)
    check_choice("--as", output, ("reft", "lora"))
    TransferConfig(polish_steps=polish_steps, start=start, scale_search=scale_search)  # type: ignore[arg-type]
    texts = check_transfer_prompts(_prompts(g, prompts)[:limit])  # cheap inputs first: fail before loading the models
    sources = {"donor": _source(donor_name), "recipient": _source(recipient_name), "adapter": _source(adapter),
               "prompts": _source(prompts), "limit": limit, "backend": backend, "world": g.world,
               "zoo_root": _source(str(g.zoo_root)) if g.zoo_root is not None else None}
    _run_transfer(g, out, sources, texts, polish_steps, start, lora=output == "lora", scale_search=scale_search)


def _source(spec: str) -> str:
    """A path as an absolute path (so that a replay finds it from anywhere); a zoo name as it is."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def _run_transfer(g: Globals, out: Path, sources: dict, texts: list[str], polish_steps: int, start: str,
                  lora: bool = False, scale_search: bool = True) -> None:
    import commandv_interp as cv
    from commandv_interp.pipeline.candidates import rank
    from commandv_interp.pipeline.compute import compute_table
    from commandv_interp.pipeline.labels import transfer_label

    from commandv_interp.access.limits import check_models_fit

    backend = sources["backend"]
    # pyreft, PEFT LoRA or steering vector, told apart by the contents (named in one line)
    donor_adapter, kind_line = donor_edit(sources["adapter"], sources["donor"], lambda spec: _adapter(g, spec))
    if not g.json:
        typer.echo(kind_line)
    models = _model(g, sources["donor"], backend), _model(g, sources["recipient"], backend)
    check_models_fit(models, texts, new_tokens=_ANSWER_TOKENS)  # prompt + the donor's answer, before any work
    result = cv.transfer(*models, donor_adapter, texts, polish_steps=polish_steps, start=start, progress=not g.json,
                         scale_search=scale_search)
    scored = result.candidates
    best = rank(scored[scored.n_scoring == scored.n_scoring.max()]).head(8)
    label = transfer_label(result)  # what was applied: a paste, a paste + N distillation steps, or distillation only
    report = [f"# Transfer: {sources['donor']} → {sources['recipient']}", "",
              f"Applied: **{label}**. Chosen: `{result.choice}`, positions `{result.positions}`, layer map "
              f"{result.layer_map or '(none: no paste)'}; {len(texts)} prompts, {result.wall_s:.0f} s, "
              f"{result.flops:.2e} FLOPs.", "",
              *(["The chosen paste was then polished: trained for a few steps to reproduce the donor+adapter's "
                 "answers (`compiled/` holds the polished adapter).", ""] if result.polished is not None
                and result.converters is not None else []),
              *(["No paste was kept: a fresh adapter trained to reproduce the donor+adapter's answers scored higher "
                 "(`compiled/` holds it).", ""] if result.converters is None else []),
              "The criterion is the share of the donor+adapter's response tokens the edited recipient reproduces "
              "greedily on held-out prompts (balanced over prompts the adapter changes and prompts it leaves alone).",
              "", f"Settings: {result.config.to_dict()}.", "",
              "| candidate | stage | criterion | lift |", "|---|---|---|---|"]
    report += [f"| {r.candidate} | {r.stage} | {r.criterion:.3f} | {r.lift:.3f} |" for r in best.itertuples()]
    compute = compute_table(result)
    report += ["", "Where the compute went (the polish's budget is a share of the estimated finetune):", "",
               "| part | FLOPs | share of this call | share of the estimated finetune |", "|---|---|---|---|"]
    report += [f"| {r.part} | {r.flops:.3g} | {r.share_of_call:.1%} | "
               f"{'–' if r.share_of_finetune != r.share_of_finetune else f'{r.share_of_finetune:.2%}'} |"
               for r in compute.itertuples()]
    result.save(out, sources=sources, report="\n".join(report) + "\n")
    if lora:  # the recipient LoRA in PEFT's format, distilled from the donor+edit's whole answers
        result.to_peft(out / "lora", models[0], texts, progress=not g.json)
    _emit(g, {"out": str(out), "choice": result.choice, "label": label, "alpha": result.alpha,
              "layer_map": result.layer_map, "flops": result.flops, "wall_s": result.wall_s,
              "compute": compute.to_dict(orient="records"), "config": result.config.to_dict()},
          f"wrote {out}: {label} (`{result.choice}`), compiled adapter in {out / 'compiled'}; best candidates:",
          [{"candidate": r.candidate, "stage": r.stage, "criterion": round(r.criterion, 4)}
           for r in best.itertuples()])


def _replay(g: Globals, folder: Path, inputs: tuple, limit: int | None, backend: str) -> None:
    from commandv_interp.pipeline.replay import recorded_sources, replay_transfer

    if all(x is not None for x in inputs):
        sources = dict(zip(("donor", "recipient", "adapter", "prompts"), inputs)) | {"limit": limit,
                                                                                     "backend": backend}
    elif all(x is None for x in inputs):
        sources = recorded_sources(folder)
        g = Globals(g.json, g.debug, Path(sources["zoo_root"]) if sources.get("zoo_root") else g.zoo_root,
                    sources.get("world", g.world))
    else:
        raise ValueError("--replay takes all of DONOR RECIPIENT ADAPTER_FOLDER PROMPTS, or none of them (then the "
                         "ones the transfer records)")
    texts = _prompts(g, sources["prompts"])[:sources["limit"]]
    outcome, _ = replay_transfer(folder, _model(g, sources["donor"], sources["backend"]),
                                 _model(g, sources["recipient"], sources["backend"]), _adapter(g, sources["adapter"]),
                                 texts, progress=not g.json)
    differ = [f"{what} {old!r} was recorded, the replay gives {new!r}" for what, old, new, same in (
        ("choice", outcome.recorded_choice, outcome.choice, outcome.same_choice),
        ("adapter digest", outcome.recorded_digest, outcome.digest, outcome.same_digest)) if not same]
    verdict = ("reproduced: the same choice and the same adapter digest" if outcome.reproduced
               else "NOT reproduced: " + "; ".join(differ))
    _emit(g, {"replay": str(folder)} | outcome.to_dict(), f"replayed {folder}: {verdict}")
    if not outcome.reproduced:
        raise typer.Exit(1)


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
    donor_name: Annotated[str, typer.Argument(metavar="DONOR", help="Donor checkpoint directory or zoo model name.")],
    recipient_name: Annotated[str, typer.Argument(metavar="RECIPIENT",
                                                  help="Recipient checkpoint directory or zoo model name.")],
    prompts: PromptsArg,
    out: Annotated[Path, typer.Option(help="Folder for the per-layer CSVs, figures and report.md.")],
    limit: Annotated[int, typer.Option(min=4, help="Use the first LIMIT prompts.")] = 64,
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Per-layer report of the edit one transfer applies (the polished adapter when it chose a polish, labelled as
    such): layer attribution against the donor with its whole adapter, the paste's state/delta fidelity, and the
    final edit layer by layer (what the polish changed), as CSVs, figures and report.md. The folder is verified as a whole, and the models must be the ones it was made
    with.

    Example: commandv analyze jb/ llama-6x128 gpt2-4x96 zoo:jailbreak:test --out jb-analysis/
    """
    from commandv_interp.app.report import analyze_transfer
    from commandv_interp.pipeline import load_transfer

    g = Globals(json_output, debug, zoo_root, world)
    _out_folder(out, transfer_folder, donor_name, recipient_name, prompts, command="analyze", zoo_root=g.zoo_root)
    chosen, texts = load_transfer(transfer_folder), _prompts(g, prompts)[:limit]  # before loading the models
    from commandv_interp.access.limits import check_models_fit

    models = _model(g, donor_name, backend), _model(g, recipient_name, backend)
    check_models_fit(models, texts, new_tokens=_ANSWER_TOKENS)  # prompt + the donor's answer, before any work
    files = analyze_transfer(chosen, *models, texts, out)
    _emit(g, {"out": str(out), "files": [str(f) for f in files]}, f"wrote {out / 'report.md'} and {len(files)} files")
