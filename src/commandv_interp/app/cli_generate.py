"""App (cli_generate): consumes a model, prompts and an edit named on the command line (a ``commandv transfer``
folder, a compiled or native adapter folder, or a donor adapter with ``--converters``), produces the model's greedy
answers under that edit as ``{prompt, output}`` rows (JSONL): ``commandv generate``, registered on the ``commandv``
app. ``commandv paste`` stays the step-by-step form (donor adapter and converters, positions, α).

    $ commandv transfer DONOR_DIR RECIPIENT_DIR ADAPTER prompts.txt --out t1
    $ commandv generate RECIPIENT_DIR questions.txt --edit t1 --out answers.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from commandv_interp.app.cli_app import (BackendOpt, BatchOpt, ChatOpt, DebugOpt, Globals, JsonOpt, ModelArg,
                                         PromptsArg, WorldOpt, ZooRootOpt, _adapter, _chat_texts, _command, _emit,
                                         _model, _prompts, app)
from commandv_interp.app.cli_errors import out_file as _out

__all__: list[str] = []

TRANSFER_FILE = "transfer.json"  # what marks a `commandv transfer` folder


def _load_edit(g: Globals, spec: str, converters: Path | None) -> tuple[str, object, object]:
    """Read the edit ``spec`` names from disk (before any model loads): ``("transfer", Transfer, None)``,
    ``("paste", donor adapter, converters)`` or ``("native", adapter, None)``."""
    import commandv_interp as cv

    folder = Path(spec)
    if (folder / TRANSFER_FILE).is_file():
        if converters is not None:
            raise ValueError(f"--edit {spec!r} is a transfer folder, which holds its own converters; drop --converters "
                             f"{str(converters)!r}")
        return "transfer", cv.load_transfer(folder), None
    adapter = _adapter(g, spec)
    if converters is None:
        return "native", adapter, None
    conv = cv.Converters.load(converters)
    conv.check_adapter(adapter)
    return "paste", adapter, conv


def _applied(kind: str, edit, conv, spec: str, access):
    """The context manager applying a loaded edit to ``access`` (refused if made for another model), and the words
    for what it is."""
    import commandv_interp as cv
    from commandv_interp.pipeline.labels import PASTE, transfer_label

    if kind == "transfer":
        if edit.converters is not None:
            edit.converters.check_recipient(access)
        if edit.polished is not None and edit.polished.d_model != access.d_model:
            raise ValueError(f"the transfer {spec!r} was made for a recipient of d_model {edit.polished.d_model}, "
                             f"{access.name!r} has {access.d_model}: pass the recipient it was made for")
        return edit.paste(access), transfer_label(edit)
    if kind == "paste":
        conv.check_recipient(access)
        return cv.paste(access, edit, conv), PASTE
    if edit.d_model != access.d_model:
        raise ValueError(f"the adapter {spec!r} has d_model {edit.d_model} but {access.name!r} has "
                         f"{access.d_model}: a donor's adapter needs --converters (from `commandv derive`), or pass "
                         "a transfer folder or a compiled adapter of this model")
    made_for = edit.metadata.get("config_hash")
    if made_for is not None and made_for != access.config_hash:
        raise ValueError(f"the adapter {spec!r} was made for a model with config hash {made_for!r}, but "
                         f"{access.name!r} has {access.config_hash!r}: pass the model it was made for")
    return cv.apply_adapter(access, edit), "native adapter"


@_command(app, "generate")
def generate_cmd(
    model: ModelArg,
    prompts: PromptsArg,
    edit: Annotated[str, typer.Option(help="A `commandv transfer` folder, a compiled or native adapter folder of "
                                           "MODEL, or a donor adapter (folder or zoo:<model>:<behavior>) with "
                                           "--converters.")],
    out: Annotated[Path, typer.Option(help="Generations to write (.jsonl, rows {prompt, output}; prompt as given, "
                                           "before any chat template).")],
    converters: Annotated[Path | None, typer.Option(
        help="Converters (from `commandv derive`) to paste a donor adapter given as --edit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Greedy tokens per prompt.")] = 32,
    chat_template: ChatOpt = False, batch_size: BatchOpt = 32, backend: BackendOpt = "nnsight",
    json_output: JsonOpt = False, debug: DebugOpt = False, zoo_root: ZooRootOpt = None, world: WorldOpt = "main",
) -> None:
    """Generate from MODEL under an edit (greedy): what a transfer, a compiled adapter or a paste makes it say.

    Example: commandv generate gpt2-4x96 zoo:jailbreak:test --edit jb --out answers.jsonl

    Example: commandv generate gpt2-4x96 zoo:refusal:test --edit zoo:llama-6x128:refusal --converters
    converters.safetensors --out answers.jsonl
    """
    from tqdm.auto import tqdm

    from commandv_interp.access.limits import check_fits_context
    from commandv_interp.io import atomic_write

    g = Globals(json_output, debug, zoo_root, world)
    _out(out, model, prompts, edit, converters, zoo_root=g.zoo_root)
    texts = _prompts(g, prompts)  # cheap inputs first: fail before loading the model
    loaded = _load_edit(g, edit, converters)
    access = _model(g, model, backend)
    context, applied = _applied(*loaded, edit, access)
    fed = _chat_texts(access, texts, chat_template)
    check_fits_context(access, fed, new_tokens=max_new_tokens)  # refuse before any generation runs
    outputs: list[str] = []
    with context:
        for start in tqdm(range(0, len(fed), batch_size), desc=f"generate with {access.name}", disable=g.json):
            outputs += access.generate(access.encode(fed[start:start + batch_size]), max_new_tokens=max_new_tokens)
    lines = "".join(json.dumps({"prompt": p, "output": o}) + "\n" for p, o in zip(texts, outputs))
    atomic_write(out, lambda path: path.write_text(lines, encoding="utf-8"))
    _emit(g, {"out": str(out), "n": len(outputs), "edit": applied, "max_new_tokens": max_new_tokens},
          f"wrote {len(outputs)} generations to {out} ({applied})")
