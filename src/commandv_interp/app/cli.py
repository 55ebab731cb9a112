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
from pathlib import Path
from typing import Annotated

import typer

from commandv_interp.app.cli_errors import MAX_ALPHA, USER_ERRORS, alpha_option as _alpha, command as _command
from commandv_interp.app.cli_errors import out_file as _out, out_folder as _out_folder
from commandv_interp.app.cli_app import (  # noqa: F401  the shared app, options and input readers
    AdapterArg, AlphaOpt, Assignment, Backend, BackendOpt, BatchOpt, Behavior, ChatOpt, ConvertersArg, DebugOpt,
    DemoMethod, DeriveMethod, DonorProfileArg, Globals, JsonOpt, MatchMethod, Metric, ModelArg, PastePositions,
    PositionsOpt, ProfileSet, PromptsArg, RecipientProfileArg, RemoteOpt, Split, WorldName, WorldOpt, ZooRootOpt,
    _adapter, _cell, _chat_texts, _emit, _layers, _model, _plain, _prompts, _remote, _table, _zoo_spec, app, zoo_app,
)

__all__ = ["app", "zoo_app", "USER_ERRORS", "MAX_ALPHA"]


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
from commandv_interp.app import cli_generate  # noqa: E402,F401  registers `generate` on `app`
