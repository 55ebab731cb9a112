"""App (cli_zoo): consumes zoo model names, behaviors and adapters named on the command line (of the main or the
held-out world, ``--world``), produces the zoo's model table, a regenerated zoo folder and behavior rates: the
``commandv zoo list``, ``zoo train`` and ``zoo score`` subcommands, registered on ``zoo_app`` of
:mod:`~commandv_interp.app.cli`.

    $ commandv zoo list --world heldout
    $ commandv zoo score neox-4x80 refusal --world heldout --limit 32
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from commandv_interp.app.cli_app import (BackendOpt, Behavior, DebugOpt, Globals, JsonOpt, ModelArg, Split, WorldOpt,
                                         ZooRootOpt, _adapter, _command, _emit, _model, _out_folder, zoo_app)

__all__: list[str] = []


@_command(zoo_app, "list")
def zoo_list_cmd(
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """List the zoo's models (from its manifest).

    Example: commandv zoo list
    """
    from commandv_interp import zoo

    g = Globals(json_output, debug, zoo_root, world)
    models = zoo.manifest(g.zoo_root, g.world)["models"]
    rows = [{"model": name, "family": e["spec"]["family"], "layers": e["spec"]["n_layers"],
             "width": e["spec"]["d_model"], "tokenizer": e["spec"]["tokenizer"], "params": e.get("n_params", ""),
             "adapters": ",".join(sorted(e.get("adapters", {})))} for name, e in sorted(models.items())]
    _emit(g, {"models": rows}, rows=rows)


@_command(zoo_app, "train")
def zoo_train_cmd(
    quick: Annotated[bool, typer.Option(help="A few steps of everything (about a minute; learns nothing).")] = False,
    out: Annotated[Path | None, typer.Option(help="Destination folder (default: the shipped zoo).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Only this zoo model (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds pretraining and adapter training.")] = 0,
    reuse: Annotated[bool, typer.Option(help="Keep matching pretrained checkpoints in --out.")] = False,
    json_output: JsonOpt = False, debug: DebugOpt = False, world: WorldOpt = "main",
) -> None:
    """Regenerate the zoo (base models, donor adapters, manifest) from seeds.

    Example: commandv zoo train --quick --out /tmp/zoo --model gpt2-4x96
    """
    from commandv_interp.zoo import train

    g = Globals(json_output, debug, world=world)
    if out is not None:
        _out_folder(out, command="zoo train")
    if model and len(set(model)) != len(model):
        raise ValueError(f"--model names {sorted(m for m in set(model) if model.count(m) > 1)} more than once; give "
                         "each model once")
    if not g.json:
        argv = (["--quick"] if quick else []) + (["--out", str(out)] if out else []) + ["--seed", str(seed)]
        argv += ["--world", g.world]
        train.main(argv + [a for m in model or [] for a in ("--model", m)] + (["--reuse"] if reuse else []))
        return
    manifest = train.train_zoo(out, model, seed, quick, reuse, world=g.world)  # out None: the world's shipped folder
    _emit(g, {"out": str(out or train.world_dir(g.world)), "models": sorted(manifest["models"]),
              "behavior_table": manifest["behavior_table"], "timings_s": manifest["timings_s"]})


@_command(zoo_app, "score")
def zoo_score_cmd(
    model: ModelArg, behavior: Annotated[Behavior, typer.Argument(help="Zoo behavior to score.")],
    split: Annotated[Split, typer.Option(help="Prompt split.")] = "test",
    cue: Annotated[bool, typer.Option(help="Prepend the behavior's cue line (the latent trigger).")] = False,
    adapter: Annotated[str | None, typer.Option(
        help="Apply this adapter natively: pyreft folder (e.g. from `commandv compile`) or zoo:<model>:<behavior>.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first LIMIT prompts.")] = None,
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Score MODEL's greedy responses on a zoo behavior (optionally with a native adapter).

    Example: commandv zoo score qwen2-5x160 refusal --adapter recipient-refusal
    """
    import contextlib

    import commandv_interp as cv
    from commandv_interp import zoo

    g = Globals(json_output, debug, zoo_root, world)
    native = _adapter(g, adapter) if adapter is not None else None
    access = _model(g, model, backend)
    if native is not None:
        from commandv_interp.access.fingerprint import weights_digest

        native.check_model(access.name, access.n_layers, access.d_model, access.config_hash, weights_digest(access))
    with cv.apply_adapter(access, native) if native is not None else contextlib.nullcontext():
        rates = zoo.evaluate(access, behavior, split, cue=cue, limit=limit, world=g.world)
    title = f"{access.name} on {behavior} ({split}{', cue' if cue else ''}{', adapter ' + adapter if adapter else ''}):"
    _emit(g, {"model": access.name, "behavior": behavior, "split": split, "cue": cue, "adapter": adapter,
              "rates": rates}, title, [{"metric": k, "value": v} for k, v in rates.items()])
