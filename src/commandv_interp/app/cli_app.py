"""App (cli_app): consumes nothing, produces the ``commandv`` Typer app and ``zoo_app``, and what every subcommand
module shares: the global options, the argument types, the readers of models, prompts and adapters named on the
command line, and the one writer of results (a table or one JSON object). The subcommand modules
(:mod:`~commandv_interp.app.cli`, ``cli_transfer``, ``cli_zoo``, ``cli_generate``) import it and register their
commands on ``app``; :mod:`~commandv_interp.app.cli` imports them all, so ``commandv_interp.app.cli:app`` is the
whole CLI.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

# _command and _out_folder are re-exported for the subcommand modules
from commandv_interp.app.cli_errors import command as _command, one_line as _one_line  # noqa: F401
from commandv_interp.app.cli_errors import out_folder as _out_folder  # noqa: F401

__all__ = ["app", "zoo_app", "Globals"]

# Choices mirror the library's Literal types (tests/test_cli.py checks they stay equal); they are spelled out here
# so that `commandv --help` does not import torch.
Backend = Literal["nnsight", "transformer_lens"]
MatchMethod = Literal["depth", "similarity"]
Metric = Literal["cka", "debiased_cka", "r2", "mutual_knn"]
Assignment = Literal["argmax", "monotone"]
DeriveMethod = Literal["pinv", "ridge", "affine", "procrustes", "interface"]
DemoMethod = Literal["transfer", "pinv", "ridge", "affine", "procrustes", "interface"]
PastePositions = Literal["last", "last+decode", "all", "all+decode"]
Behavior = Literal["refusal", "jailbreak", "cot"]
ProfileSet = Literal["profile", "profile+train", "profile+train+cue", "task"]
Split = Literal["train", "test", "profile"]
WorldName = Literal["main", "heldout"]


app = typer.Typer(name="commandv", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Command-V: profile a donor and a recipient LLM, match layers, fit converters and paste "
                       "the donor's ReFT adapter into the recipient.\n\n"
                       "Every subcommand also takes --json (one JSON object on stdout instead of tables) and --debug "
                       "(tracebacks instead of one-line errors); those naming zoo models take --zoo-root and --world.")
zoo_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="The embedded model zoo: list, regenerate and score its models.")
app.add_typer(zoo_app, name="zoo")


@dataclass(frozen=True)
class Globals:
    """The options every subcommand takes (``--json``, ``--debug``; ``--zoo-root`` and ``--world`` where zoo names
    are read)."""

    json: bool = False
    debug: bool = False
    zoo_root: Path | None = None  # None: the shipped zoo of `world`
    world: str = "main"  # the zoo world of zoo model names, zoo:<...> specs, scorers (`zoo.WORLDS`)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of user errors.")]
ZooRootOpt = Annotated[Path | None, typer.Option(
    "--zoo-root", envvar="COMMANDV_ZOO_ROOT",
    help="Zoo folder for zoo names (default: the shipped zoo; e.g. one written by `commandv zoo train`).")]
WorldOpt = Annotated[WorldName, typer.Option(
    help="Zoo world of zoo names, zoo:<...> prompts and adapters, and scoring ('heldout': the second world).")]


# ---------------------------------------------------------------- inputs: models, prompts, adapters, layers


def _model(g: Globals, spec: str, backend: str):
    """A checkpoint directory (nnsight, or a TransformerBridge over it) or a zoo model name."""
    path = Path(spec)
    if path.exists():
        import commandv_interp as cv

        if backend == "nnsight":
            return cv.open_model(path)
        import copy

        import torch
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bridge = TransformerBridge.boot_transformers(str(path), hf_model=copy.deepcopy(hf), tokenizer=tok)
        return cv.open_model(bridge, name=path.name)
    from commandv_interp import zoo

    try:
        return zoo.load_model(spec, backend, g.zoo_root, g.world)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{spec!r} is not a checkpoint directory, and {_one_line(error)}") from error


def _zoo_spec(spec: str, form: str) -> tuple[str, str]:
    parts = spec.split(":")
    if len(parts) != 3 or not all(parts[1:]):
        raise ValueError(f"{spec!r} is not of the form {form}")
    return parts[1], parts[2]


def _prompts(g: Globals, spec: str) -> list[str]:
    """A prompts file (``load_prompts``) or ``zoo:<behavior>:<split>`` of ``g.world``."""
    if spec.startswith("zoo:"):
        from commandv_interp import zoo

        return zoo.prompts(*_zoo_spec(spec, "zoo:<behavior>:<split>"), g.world)
    from commandv_interp import load_prompts

    return load_prompts(spec)


def _adapter(g: Globals, spec: str):
    """A pyreft adapter folder, ``zoo:<model>:<behavior>`` of ``g.world`` (its NodiReFT adapter) or
    ``zoo:<model>:<behavior>:<lora|steering>`` (the main world's other donor edits)."""
    if spec.startswith("zoo:") and spec.count(":") == 3:
        from commandv_interp.zoo.donor_edits import ZOO_EDIT_KINDS, load_zoo_edit

        model_name, behavior, kind = spec.split(":")[1:]
        if kind not in ZOO_EDIT_KINDS or g.world not in (None, "main"):
            raise ValueError(f"{spec!r}: the zoo's donor edits are zoo:<model>:<behavior>:<kind> with kind one of "
                             f"{list(ZOO_EDIT_KINDS)}, in the main world")
        return load_zoo_edit(model_name, behavior, kind, g.zoo_root)
    if spec.startswith("zoo:"):
        from commandv_interp import zoo

        return zoo.load_adapter(*_zoo_spec(spec, "zoo:<model>:<behavior>"), g.zoo_root, g.world)
    from commandv_interp import load_adapter

    return load_adapter(spec)


def _layers(text: str | None) -> list[int] | None:
    """``--layers``: distinct block indices (``validation.parse_layers``); the range is checked once the model is
    open."""
    from commandv_interp.validation import parse_layers

    return parse_layers(text)


def _chat_texts(access, texts: list[str], chat_template: bool) -> list[str]:
    """``texts`` through ``access``'s chat template when ``--chat-template`` is given (refused without one)."""
    if not chat_template:
        return texts
    if not getattr(access.tokenizer, "chat_template", None):
        raise ValueError(f"--chat-template: the tokenizer of {access.name!r} has no chat template; drop "
                         "--chat-template, or use a model whose tokenizer defines one")
    from commandv_interp.access.chat import format_prompts

    return format_prompts(access.tokenizer, texts, True)


# ---------------------------------------------------------------- outputs: one JSON object or tables


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(g: Globals, result: dict, summary: str | None = None, rows: list[dict] | None = None) -> None:
    """Print ``result`` as one JSON object (``--json``), else the summary line and the table."""
    if g.json:
        typer.echo(json.dumps(_plain(result), sort_keys=True))
        return
    if summary:
        typer.echo(summary)
    if rows is not None:
        typer.echo(_table(rows))


# ---------------------------------------------------------------- pipeline commands

ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Checkpoint directory or zoo model name.")]
PromptsArg = Annotated[str, typer.Argument(metavar="PROMPTS",
                                           help="Prompts file (.txt/.json/.jsonl) or zoo:<behavior>:<split>.")]
AdapterArg = Annotated[str, typer.Argument(metavar="ADAPTER_FOLDER",
                                           help="pyreft adapter folder or zoo:<model>:<behavior>.")]
DonorProfileArg = Annotated[Path, typer.Argument(metavar="DONOR_PROFILE", help="Donor profile (.safetensors).")]
RecipientProfileArg = Annotated[Path, typer.Argument(metavar="RECIPIENT_PROFILE",
                                                     help="Recipient profile over the same prompts.")]
ConvertersArg = Annotated[Path, typer.Argument(metavar="CONVERTERS", help="Converters written by `commandv derive`.")]
BackendOpt = Annotated[Backend, typer.Option(help="How to open MODEL.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")]
PositionsOpt = Annotated[PastePositions, typer.Option(help="Where the edit acts (+decode: also on new tokens).")]
AlphaOpt = Annotated[float, typer.Option(help="Scale of the pasted delta.")]
ChatOpt = Annotated[bool, typer.Option(
    "--chat-template", help="Feed each prompt through the tokenizer's chat template (one user turn).")]
RemoteOpt = Annotated[str | None, typer.Option(
    help="Run through nnsight's remote execution: 'ndif' (NDIF, remote=True), 'local' (simulate the server here) "
         "or a server URL. The nnsight backend only.")]


def _remote(value: str | None) -> bool | str:
    if value is None:
        return False
    return True if value == "ndif" else value
