"""App (cli): consumes checkpoints, prompt files, profiles, layer maps, converters and pyreft adapter folders
named on the command line, produces the files of each pipeline step (profile ``.safetensors``, ``map.json``,
converters ``.safetensors``, ``generations.jsonl``, compiled pyreft folders) and a table or one JSON object on stdout.

Every subcommand is a thin layer over the public API (``commandv_interp`` and ``commandv_interp.zoo``); heavy
modules are imported inside the commands so that ``commandv --help`` does not load the models' libraries here.
User errors (a missing file, profiles of different prompt sets, an unknown zoo model, a bad option value, a full
disk, ...) exit with code 2 and one ``error: ...`` line on stderr naming the file or option and the fix;
``commandv --debug ...`` shows the traceback instead. No command overwrites one of its own inputs or writes NaN/inf;
warnings about degenerate data print as ``warning: ...`` lines.

    $ commandv profile llama-6x128 zoo:refusal:profile --out donor.safetensors
    $ commandv profile qwen2-5x160 zoo:refusal:profile --out recipient.safetensors
    $ commandv match donor.safetensors recipient.safetensors --out map.json --method similarity
    $ commandv derive donor.safetensors recipient.safetensors --map map.json --out converters.safetensors
    $ commandv paste qwen2-5x160 zoo:llama-6x128:refusal converters.safetensors zoo:refusal:test \\
          --out generations.jsonl --score refusal
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from commandv_interp.app.cli_errors import MAX_ALPHA, USER_ERRORS, alpha_option as _alpha, command as _command
from commandv_interp.app.cli_errors import one_line as _one_line, out_file as _out, out_folder as _out_folder

__all__ = ["app", "zoo_app", "USER_ERRORS", "MAX_ALPHA"]

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
    """A pyreft adapter folder or ``zoo:<model>:<behavior>`` of ``g.world``."""
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


@_command(app, "profile")
def profile_cmd(
    model: ModelArg, prompts: PromptsArg,
    out: Annotated[Path, typer.Option(help="Profile file to write (.safetensors).")],
    layers: Annotated[str | None, typer.Option(help="Comma-separated block indices (default: all).")] = None,
    batch_size: BatchOpt = 32, backend: BackendOpt = "nnsight", remote: RemoteOpt = None, chat_template: ChatOpt = False,
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Profile MODEL's block outputs at the last token of each prompt.

    Example: commandv profile llama-6x128 zoo:refusal:profile --out donor.safetensors --layers 0,2,4
    """
    import commandv_interp as cv

    from commandv_interp.validation import check_layers

    g = Globals(json_output, debug, zoo_root, world)
    _out(out, model, prompts, zoo_root=g.zoo_root)
    texts, layer_list = _prompts(g, prompts), _layers(layers)  # cheap inputs first: fail before loading the model
    access = _model(g, model, backend)
    if layer_list is not None:
        check_layers(layer_list, access.n_layers, "--layers", access.name)
    texts = _chat_texts(access, texts, chat_template)
    prof = cv.profile(access, texts, layers=layer_list, batch_size=batch_size, remote=_remote(remote))
    prof.save(out)
    result = {"out": str(out), "model": prof.model_name, "n_prompts": prof.n_prompts, "d_model": prof.d_model,
              "layers": prof.layers, "prompts_fingerprint": prof.prompts_fingerprint}
    _emit(g, result, f"wrote {out}: {prof.model_name}, {prof.n_prompts} prompts x d_model {prof.d_model}, "
                     f"layers {prof.layers}, prompts fingerprint {prof.prompts_fingerprint}")


@_command(app, "match")
def match_cmd(
    donor_profile: DonorProfileArg, recipient_profile: RecipientProfileArg,
    out: Annotated[Path, typer.Option(help="Layer map to write (.json).")],
    method: Annotated[MatchMethod, typer.Option(help="Relative depth (paper) or similarity search.")] = "depth",
    metric: Annotated[Metric, typer.Option(help="Similarity metric (also scored for depth).")] = "cka",
    assignment: Annotated[Assignment, typer.Option(help="Per donor layer, or order-preserving.")] = "argmax",
    json_output: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Match each donor layer to a recipient layer.

    Example: commandv match donor.safetensors recipient.safetensors --out map.json --method similarity
    """
    import commandv_interp as cv

    g = Globals(json_output, debug)
    _out(out, donor_profile, recipient_profile)
    donor, recipient = cv.ActivationProfile.load(donor_profile), cv.ActivationProfile.load(recipient_profile)
    layer_map = cv.match_layers(donor, recipient, method=method, metric=metric, assignment=assignment, progress=True)
    layer_map.save(out)
    rows = [{"donor_layer": d, "recipient_layer": r, metric: s} for (d, r), s in zip(layer_map.pairs, layer_map.scores)]
    _emit(g, {"out": str(out), "method": method, "metric": metric, "assignment": layer_map.assignment,
              "pairs": [list(p) for p in layer_map.pairs], "scores": list(layer_map.scores)},
          f"wrote {out}: {layer_map.donor_model} -> {layer_map.recipient_model} ({method})", rows)


@_command(app, "derive")
def derive_cmd(
    donor_profile: DonorProfileArg, recipient_profile: RecipientProfileArg,
    map_file: Annotated[Path, typer.Option("--map", help="Layer map written by `commandv match`.")],
    out: Annotated[Path, typer.Option(help="Converters file to write (.safetensors).")],
    method: Annotated[DeriveMethod, typer.Option(
        help="Converter fit; 'interface' fits only the --adapter's read and write directions.")] = "pinv",
    adapter: Annotated[str | None, typer.Option(
        help="Donor adapter (folder or zoo:<model>:<behavior>) for --method interface.")] = None,
    chain_alpha: Annotated[float | None, typer.Option(
        help="Chain the interface fit layer after layer under the paste at this alpha (needs --donor-model, "
             "--recipient-model and --prompts).")] = None,
    donor_model: Annotated[str | None, typer.Option(help="Donor checkpoint dir or zoo model, for --chain-alpha.")] = None,
    recipient_model: Annotated[str | None, typer.Option(
        help="Recipient checkpoint dir or zoo model, for --chain-alpha.")] = None,
    prompts: Annotated[str | None, typer.Option(
        help="The prompts both profiles were taken on (file or zoo:<behavior>:<split>), for --chain-alpha.")] = None,
    backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Fit the converters of every mapped layer pair; print their held-out fit scores.

    Example: commandv derive donor.safetensors recipient.safetensors --map map.json --out converters.safetensors

    Example: commandv derive donor.safetensors recipient.safetensors --map map.json --out refusal.safetensors
    --method interface --adapter zoo:llama-6x128:refusal

    Example: commandv derive donor.safetensors recipient.safetensors --map map.json --out refusal.safetensors
    --method interface --adapter zoo:qwen2-5x160:refusal --chain-alpha 0.25 --donor-model qwen2-5x160
    --recipient-model gpt2-4x96 --prompts zoo:refusal:train
    """
    import commandv_interp as cv
    from commandv_interp.access.limits import check_fits_context

    g = Globals(json_output, debug, zoo_root, world)
    _out(out, donor_profile, recipient_profile, map_file, adapter, prompts, donor_model, recipient_model,
         zoo_root=g.zoo_root)
    if chain_alpha is not None:
        _alpha(chain_alpha, "--chain-alpha")
    donor, recipient = cv.ActivationProfile.load(donor_profile), cv.ActivationProfile.load(recipient_profile)
    layer_map = cv.LayerMap.load(map_file)
    if (method == "interface") != (adapter is not None):
        raise ValueError("--method interface fits converters to one adapter: give --adapter with it (and only "
                         f"with it); got --method {method} and --adapter {adapter!r}")
    chain_inputs = {"--donor-model": donor_model, "--recipient-model": recipient_model, "--prompts": prompts}
    if chain_alpha is not None:
        missing = [name for name, value in chain_inputs.items() if value is None]
        if method != "interface" or missing:
            raise ValueError(f"--chain-alpha chains an interface fit: it needs --method interface and "
                             f"{', '.join(chain_inputs)}; missing: {missing or '--method interface'}")
        texts = _prompts(g, prompts)
        for given in (donor, recipient):  # cheap inputs first: fail before loading the models
            given.check_taken_on(texts)
        donor_access, recipient_access = _model(g, donor_model, backend), _model(g, recipient_model, backend)
        for access in (donor_access, recipient_access):
            check_fits_context(access, texts)
        converters = cv.fit_chained_converters(donor_access, recipient_access, _adapter(g, adapter), texts,
                                               layer_map, chain_alpha, donor, recipient)
    elif adapter:
        converters = cv.fit_converters(donor, recipient, layer_map, "interface", _adapter(g, adapter))
    else:
        converters = cv.fit_converters(donor, recipient, layer_map, method=method)
    converters.save(out)
    rows = [{"donor_layer": p.donor_layer, "recipient_layer": p.recipient_layer, "direction": direction} | scores
            for p in converters for direction, scores in p.fit_scores.items() if isinstance(scores, dict)]
    _emit(g, {"out": str(out), "method": method, "fit_scores": rows},
          f"wrote {out}: {len(converters)} layer pairs ({method}); held-out fit scores:", rows)


@_command(app, "paste")
def paste_cmd(
    recipient: Annotated[str, typer.Argument(metavar="RECIPIENT", help="Recipient checkpoint dir or zoo model name.")],
    adapter: AdapterArg,
    converters: ConvertersArg,
    prompts: PromptsArg,
    out: Annotated[Path, typer.Option(help="Generations to write (.jsonl, rows {prompt, output}).")],
    positions: PositionsOpt = "last", alpha: AlphaOpt = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Greedy tokens per prompt.")] = 32,
    batch_size: BatchOpt = 32, backend: BackendOpt = "nnsight", remote: RemoteOpt = None,
    score: Annotated[Behavior | None, typer.Option(help="Score the outputs as this zoo behavior.")] = None,
    chat_template: ChatOpt = False,
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Generate from RECIPIENT with the donor ADAPTER pasted in through CONVERTERS (greedy).

    Example: commandv paste qwen2-5x160 zoo:llama-6x128:refusal converters.safetensors zoo:refusal:test
    --out generations.jsonl --score refusal
    """
    from tqdm.auto import tqdm

    import commandv_interp as cv
    from commandv_interp.access.limits import check_fits_context
    from commandv_interp.io import atomic_write

    g = Globals(json_output, debug, zoo_root, world)
    _out(out, recipient, adapter, converters, prompts, zoo_root=g.zoo_root)
    _alpha(alpha)
    donor_adapter, conv, texts = _adapter(g, adapter), cv.Converters.load(converters), _prompts(g, prompts)
    donor_adapter.check_positions(positions)
    conv.check_adapter(donor_adapter)
    access = _model(g, recipient, backend)
    conv.check_recipient(access)
    texts = _chat_texts(access, texts, chat_template)
    check_fits_context(access, texts, new_tokens=max_new_tokens)  # refuse before any generation runs
    outputs: list[str] = []
    with cv.paste(access, donor_adapter, conv, positions=positions, alpha=alpha):
        for start in tqdm(range(0, len(texts), batch_size), desc=f"paste into {access.name}"):
            outputs += access.generate(access.encode(texts[start:start + batch_size]), max_new_tokens=max_new_tokens,
                                       remote=_remote(remote))
    lines = "".join(json.dumps({"prompt": p, "output": o}) + "\n" for p, o in zip(texts, outputs))
    atomic_write(out, lambda path: path.write_text(lines, encoding="utf-8"))
    result = {"out": str(out), "n": len(outputs), "positions": positions, "alpha": alpha}
    rows = None
    if score is not None:
        from commandv_interp import zoo

        result["rates"] = zoo.score(score, texts, outputs, g.world)
        rows = [{"metric": k, "value": v} for k, v in result["rates"].items()]
    _emit(g, result, f"wrote {len(outputs)} generations to {out}", rows)


@_command(app, "compile")
def compile_cmd(
    adapter: AdapterArg,
    converters: ConvertersArg,
    out: Annotated[Path, typer.Option(help="pyreft folder to write (the native recipient adapter).")],
    positions: PositionsOpt = "last", alpha: AlphaOpt = 1.0,
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Compile the pasted edit into a native recipient adapter (pyreft folder format).

    Example: commandv compile zoo:llama-6x128:refusal converters.safetensors --out recipient-refusal
    """
    import commandv_interp as cv

    g = Globals(json_output, debug, zoo_root, world)
    _out_folder(out, adapter, converters, command="compile", zoo_root=g.zoo_root)
    _alpha(alpha)
    donor_adapter, conv = _adapter(g, adapter), cv.Converters.load(converters)
    donor_adapter.check_positions(positions)
    native = cv.compile_paste(donor_adapter, conv, positions=positions, alpha=alpha)
    cv.save_adapter(native, out)
    _emit(g, {"out": str(out), "layers": native.layers, "rank": native.rank, "d_model": native.d_model,
              "positions": native.positions},
          f"wrote {out}: NodiReFT at recipient layers {native.layers}, rank {native.rank}, d_model {native.d_model}")


@_command(app, "demo")
def demo_cmd(
    donor: Annotated[str, typer.Option(help="Donor zoo model.")] = "llama-6x128",
    recipient: Annotated[str, typer.Option(help="Recipient zoo model (another architecture).")] = "gpt2-4x96",
    behavior: Annotated[list[str] | None, typer.Option(
        help="Behavior to paste: refusal, jailbreak or cot (repeatable; default all).")] = None,
    method: Annotated[DemoMethod, typer.Option(
        help="'transfer': the label-free choice of cv.transfer per behavior; or a converter method "
             "('interface': fitted to each behavior's adapter; then --match, --profile-set, --alpha, --chain apply)."
    )] = "transfer",
    match: Annotated[MatchMethod, typer.Option(help="Layer matching.")] = "depth",
    profile_set: Annotated[ProfileSet, typer.Option(
        help="Profile prompts: generic questions; + the behaviors' training prompts; + those under cues and "
             "neutral system lines; or 'task', a small per-behavior set.")] = "task",
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first LIMIT test prompts.")] = None,
    alpha: Annotated[float, typer.Option(help="Paste scale.")] = 1.0,
    chain: Annotated[bool, typer.Option(
        help="Fit interface converters layer after layer under the paste at --alpha.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for report.md, CSVs and figures.")] = Path("commandv_demo"),
    json_output: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Offline demo on the embedded zoo: transfer each behavior's donor adapter, score it, print the tables.

    Example: commandv demo --donor gpt2-4x96 --recipient qwen2-5x160 --out demo/

    Example: commandv demo --method interface --profile-set task --out demo/

    Example: commandv demo --donor qwen2-5x160 --behavior refusal --chain --alpha 0.25
    """
    from commandv_interp.app.demo import format_transfer_tables, run_demo

    g = Globals(json_output, debug)
    _alpha(alpha)
    _out_folder(out, donor, recipient, command="demo")
    if behavior and len(set(behavior)) != len(behavior):
        raise ValueError(f"--behavior names {behavior!r} with repeats; give each behavior once")
    table = run_demo(donor, recipient, tuple(behavior or ("refusal", "jailbreak", "cot")), method, match,
                     profile_set, out=out, limit=limit, progress=not g.json, alpha=alpha, chain=chain)
    if g.json:
        _emit(g, {"out": str(out), "rows": table.to_dict(orient="records")})
    else:
        typer.echo(format_transfer_tables(table))
        typer.echo(f"report: {out / 'report.md'}")


from commandv_interp.app import cli_transfer  # noqa: E402,F401  registers `transfer`, `sweep` and `analyze` on `app`
from commandv_interp.app import cli_zoo  # noqa: E402,F401  registers `list`, `train` and `score` on `zoo_app`
