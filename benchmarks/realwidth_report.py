"""The report of ``realwidth.py``: its targets and stages as markdown tables, and ``docs/realwidth.md`` (the
``## On a GPU`` section that ``gpu_check.py`` writes is kept when the CPU tables are rewritten)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from commandv_interp.zoo.tokenization import word_tokenizer
from devices import check_device, device_name
from realwidth_models import BATCH_SIZE, DOCS, LLAMA3_VOCAB, MIB

def target_rows(stages: Stages, setup: Setup, sizes: dict[str, int], storage: int) -> list[tuple[str, ...]]:
    """(metric, value, spread, target, met) rows: a ratio is the median of its paired rounds."""
    rows = []

    def add(metric: str, value: float, limit: float, fmt: str, target: str, spread: str = "") -> None:
        rows.append((metric, fmt.format(value), spread, target, "yes" if value <= limit else "NO"))

    gen = stages.median("generate plain", 1)
    entry = stages.median("paste entry", 1)
    add(f"paste entry / {setup.n_gen}×{setup.new_tokens} generation", entry / gen, 0.05, "{:.1%}", "≤ 5%")
    for mode, limit in (("paste", 1.03), ("compiled", 1.01)):
        add(f"{mode} generation / plain", stages.paired(f"generate {mode}", "generate plain"), limit, "{:.3f}",
            f"≤ {limit:.2f}", stages.spread(f"generate {mode}", "generate plain"))
    for model, shape in (("donor", setup.donor), ("recipient", setup.recipient)):
        for name in [n for n in stages.runs if n.startswith(f"{model} profile")]:  # the timing rounds
            part = name.split("(")[1].rstrip(")")
            fraction = 1.0 if part == "all" else (int(part.split("-")[1]) + 1) / shape.n_layers
            add(f"{name} / forward", stages.paired(name, f"{model} forward"), 0.95 * fraction, "{:.3f}",
                f"≤ {0.95 * fraction:.3f}" + ("" if part == "all" else f" (0.95 × {fraction:.2f} of the blocks)"),
                stages.spread(name, f"{model} forward"))
        name = f"{model} profile (all)"
        forward_peak = stages.median(f"memory: {model} forward", 2)
        limit = 1.10 * (forward_peak + sizes[model] / MIB)
        add(f"{model} profile peak (MiB)", stages.median(f"memory: {name}", 2), limit, "{:.1f}",
            f"≤ 1.1 × (forward peak {forward_peak:.1f} + profile {sizes[model] / MIB:.1f}) = {limit:.1f}")
    rows.append(("converter storage (MiB, as saved)", f"{storage / MIB:.1f}", "", "reported", ""))
    return rows


def stage_rows(stages: Stages) -> list[tuple[str, ...]]:
    """One row per stage: profiling (timing, then memory) by model, forward first; then the others as they ran."""
    def key(name: str) -> tuple:
        bare = name.removeprefix("memory: ")
        return (name.startswith("memory"), not bare.startswith("donor"), "forward" not in bare, bare)

    profiling = sorted((n for n in stages.runs if n.removeprefix("memory: ").startswith(("donor", "recipient"))),
                       key=key)
    order = profiling + [n for n in stages.runs if n not in profiling]
    return [(name, str(len(stages.runs[name])), f"{stages.median(name, 0):.3f}", f"{stages.median(name, 1):.3f}",
             "" if stages.median(name, 2) != stages.median(name, 2) else f"{stages.median(name, 2):.1f}")
            for name in order]


def markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


TARGET_HEADER = ("metric", "value", "spread of the paired ratios", "target", "met")
STAGE_HEADER = ("stage", "runs", "wall s", "CPU s", "peak MiB")


def write_docs(path: Path, setup: Setup, args, targets, stages_table, notes: list[str]) -> None:
    shape = "{0.d_model} × {0.n_layers} blocks ({0.heads} heads, {0.kv_heads} KV heads)"
    where = "CPU" if args.device == "cpu" else device_name(check_device(args.device))
    text = "\n".join([
        f"# Command-V at the paper's widths ({where})",
        "",
        "Written by `benchmarks/realwidth.py" + (" --quick" if args.quick else "")
        + (f" --vocab {args.vocab}" if args.vocab != (len(word_tokenizer()) if args.quick else LLAMA3_VOCAB) else "")
        + " --write-docs" + ("" if Path(path).resolve() == DOCS else f" {path}") + "`; see its "
        "docstring for what each stage runs.",
        "",
        f"- donor: random Llama {shape.format(setup.donor)}, recipient: {shape.format(setup.recipient)}; "
        f"MLP width {args.intermediate}, vocabulary {args.vocab}",
        f"- {setup.n_profile} profile prompts (batch {BATCH_SIZE}); generation {setup.n_gen} prompts × "
        f"{setup.new_tokens} new tokens; {args.rounds} profiling time round(s) over {args.timing_batches} batches, "
        f"{args.gen_rounds} generation round(s)",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
        f"torch {torch.__version__}; models on {args.device} in {args.dtype}",
        "",
        "## Targets (issue 20)",
        "",
        markdown(TARGET_HEADER, targets),
        "",
        "## Stages",
        "",
        "Medians over the stage's runs: wall time, CPU time (the basis of every ratio above) and peak resident "
        "memory above the level at the stage's start. The profiling rows without `memory:` are the per-batch "
        "interleaved timing rounds (totals over their batches); the `memory:` rows are the whole runs over all "
        "prompts, in their own process with the fixed mmap threshold (slower: page faults).",
        "",
        markdown(STAGE_HEADER, stages_table),
        "",
        *notes,
        "",
    ]) + _kept_sections(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


KEPT = "\n## On a GPU"
"""The section ``gpu_check.py``'s results live in: kept when the CPU tables are rewritten."""


def _kept_sections(path: Path) -> str:
    old = path.read_text() if path.is_file() else ""
    return old[old.index(KEPT):] if KEPT in old else ""  # from the blank line before the heading
