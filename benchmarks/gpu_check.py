"""Benchmark: the GPU check (issue 30): Command-V at the paper's shapes in bf16 on one GPU, and the label-free transfer
on that GPU against the CPU, in one command sized for the 8 minutes a lent H100 allows (not yet timed on one: no
device has been lent so far).

1. Paper shapes (``realwidth.py``'s stages, run on ``--device`` in ``--dtype``): two random Llamas, donor 3072 × 28
   blocks (Llama-3.2-3B's shape), recipient 2048 × 16 (Llama-3.2-1B's), MLP width 8192 and vocabulary 128,256 as
   the real models have; the reference NodiReFT adapter. Profiling time (a read of every block, and of the donor's
   lower half) against a plain forward, profiling peak memory against a forward loop's, paste entry against a
   16 × 16 generation, paste and compiled-paste generation against plain generation: the targets of
   ``docs/realwidth.md``. On CUDA, times are wall seconds with the device synchronized and memory is
   ``torch.cuda.max_memory_allocated`` above the stage's start (``devices.py``).
2. Transfer: ``cv.transfer`` on the zoo pair of the README (llama-6x128 → gpt2-4x96, jailbreak, 128 prompts) on the
   CPU in float32 and on ``--device`` in ``--dtype``: the same choice, layer map and α are expected.

``--dry-run`` runs the same code on the CPU with small shapes (realwidth's ``--quick`` models, 64 profile prompts,
fewer rounds) and prints the table with ``cpu`` as the device: a check that the script works, not a measurement.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py [--dry-run] [--device cuda] [--dtype bfloat16] [--write-docs [PATH]]

``--write-docs`` puts the table in the ``## On a GPU`` section of ``docs/realwidth.md`` (or PATH), replacing that
section only.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import commandv_interp as cv  # noqa: E402
from commandv_interp import zoo  # noqa: E402
from commandv_interp.zoo.tokenization import word_tokenizer  # noqa: E402
from devices import DTYPES, add_device_args, check_device, device_name  # noqa: E402
from realwidth import (BATCH_SIZE, DOCS, KEPT, LLAMA3_VOCAB, REFERENCE_ADAPTER, SETUPS, Shape, Stages,  # noqa: E402
                       forward_loop, generation_stages, markdown, profile_bytes, random_llama, random_prompts,
                       reference_adapter, storage_bytes, target_rows, timing_rounds)

PAIR = ("llama-6x128", "gpt2-4x96", "jailbreak")  # the README's transfer
HEADER = ("check", "value", "target", "met")


def paper_shapes(args, device: torch.device, dtype: torch.dtype) -> tuple[list[tuple[str, ...]], Stages]:
    """Part 1: realwidth's stages on ``device``; returns its target rows and stages."""
    setup = SETUPS["quick" if args.dry_run else "full"]
    tokenizer = word_tokenizer()
    vocab = len(tokenizer) if args.dry_run else LLAMA3_VOCAB
    stages = Stages(device)
    built = {}
    for name, shape, seed in (("donor", setup.donor, 1), ("recipient", setup.recipient, 2)):
        model = random_llama(tokenizer, shape, args.intermediate, seed=seed, vocab=vocab, device=device, dtype=dtype)
        built[name] = (model, cv.open_model(model, tokenizer=tokenizer, name=name))
    (hf_donor, donor), (hf_recipient, recipient) = built["donor"], built["recipient"]
    prompts = random_prompts(tokenizer, setup.n_profile, seed=0)
    profiles = {}
    with torch.no_grad():
        for name, (model, access) in built.items():  # warmup, then the whole runs of the memory rows
            forward_loop(access, model, prompts[:BATCH_SIZE])
            stages.run(f"memory: {name} forward", lambda: forward_loop(access, model, prompts))
            profiles[name] = stages.run(f"memory: {name} profile (all)", lambda: cv.profile(
                access, prompts, batch_size=BATCH_SIZE, progress=False))
    batches = [donor.encode(prompts[start:start + BATCH_SIZE], padding_side="left")
               for start in range(0, BATCH_SIZE * args.timing_batches, BATCH_SIZE)]
    print(f"profiling time: {len(batches)} batches, {args.rounds} round(s)", flush=True)
    timing_rounds(stages, donor, hf_donor, recipient, hf_recipient, batches, args.rounds, seed=0)
    adapter, adapter_kind = donor_adapter(setup.donor)
    layer_map = cv.match_layers(profiles["donor"], profiles["recipient"], method="depth", donor_layers=adapter.layers)
    converters = cv.fit_converters(profiles["donor"], profiles["recipient"], layer_map, method="ridge")
    compiled = cv.compile_paste(adapter, converters)
    sizes = {name: profile_bytes(p) for name, p in profiles.items()}
    batch = recipient.encode(random_prompts(tokenizer, setup.n_gen, seed=1), padding_side="left")
    print(f"generation: {setup.n_gen} prompts × {setup.new_tokens} tokens, {args.gen_rounds} round(s)", flush=True)
    outputs = generation_stages(stages, recipient, hf_recipient, adapter, converters, compiled, batch,
                                setup.new_tokens, args.gen_rounds, seed=1)
    rows = [(metric, value, target, met) for metric, value, _, target, met in
            target_rows(stages, setup, sizes, storage_bytes(converters))]
    agree = sum(a == b for a, b in zip(outputs["generate paste"], outputs["generate compiled"]))
    rows.append(("paste and compiled generations agree (rows)", f"{agree}/{setup.n_gen}", "reported", ""))
    rows.append(("donor adapter", adapter_kind, "reported", ""))
    return rows, stages


def donor_adapter(shape: Shape) -> tuple[cv.Adapter, str]:
    """The reference adapter (realwidth's) where its folder is here; elsewhere (a lent machine has no shared data) a
    random NodiReFT of the same kind, rank 8, at the same layers (every other one): the same cost, not a trained
    edit."""
    if REFERENCE_ADAPTER.is_dir():
        return reference_adapter(shape), "the reference NodiReFT (rank 8, every other layer)"
    from commandv_interp.adapters import make_intervention

    torch.manual_seed(3)
    layers = range(0, shape.n_layers, 2)
    adapter = cv.Adapter({layer: make_intervention("nodireft", shape.d_model, 8).requires_grad_(False)
                          for layer in layers}, positions="last")
    return adapter, "random NodiReFT (rank 8, every other layer): the reference adapter's folder is absent here"


def zoo_model(name: str, device: torch.device, dtype: torch.dtype) -> cv.ModelAccess:
    """A zoo checkpoint loaded the usual way on ``device`` in ``dtype``."""
    path = zoo.model_dir(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    return cv.open_model(model, AutoTokenizer.from_pretrained(path, local_files_only=True), name=name)


def transfer_rows(device: torch.device, dtype: torch.dtype, dtype_name: str) -> list[tuple[str, ...]]:
    """Part 2: the README's transfer on the CPU in float32 and on ``device`` in ``dtype``."""
    donor_name, recipient_name, behavior = PAIR
    adapter = zoo.load_adapter(donor_name, behavior)
    prompts = zoo.prompts(behavior, "train")[:128]
    results = {}
    for where, (dev, dt) in {"cpu float32": (torch.device("cpu"), torch.float32),
                             f"{device_name(device)} {dtype_name}": (device, dtype)}.items():
        started = time.perf_counter()
        result = cv.transfer(zoo_model(donor_name, dev, dt), zoo_model(recipient_name, dev, dt), adapter, prompts,
                             progress=False)
        results[where] = (result, time.perf_counter() - started)
        print(f"  transfer on {where}: {result.choice}, alpha {result.alpha:.3g}, layers {result.layer_map}, "
              f"{results[where][1]:.1f} s", flush=True)
    (ref, ref_s), (got, got_s) = results.values()
    same = (got.choice, got.layer_map) == (ref.choice, ref.layer_map) and abs(got.alpha - ref.alpha) <= 0.05 * ref.alpha
    return [(f"transfer {donor_name} → {recipient_name} ({behavior}): choice, layers, α",
             f"{got.choice}, {got.layer_map}, {got.alpha:.3g}", f"as on cpu float32: {ref.choice}, {ref.layer_map}, "
             f"{ref.alpha:.3g}", "yes" if same else "NO"),
            ("transfer wall s (cpu float32 / device)", f"{ref_s:.1f} / {got_s:.1f}", "reported", "")]


def write_section(path: Path, text: str) -> None:
    """Replace (or append) the ``## On a GPU`` section of ``path``, keeping what precedes it."""
    old = path.read_text() if path.is_file() else ""
    head = old[:old.index(KEPT) + 1] if KEPT in old else (old.rstrip("\n") + "\n\n" if old else "")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + text)
    tmp.replace(path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with small shapes")
    parser.add_argument("--rounds", type=int, default=None, help="profiling time rounds (default 5; dry run 2)")
    parser.add_argument("--timing-batches", type=int, default=None, help="batches per round (default 4; dry run 2)")
    parser.add_argument("--gen-rounds", type=int, default=None, help="generation rounds (default 9; dry run 3)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default 8192; dry run 256)")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, type=Path, default=None, metavar="PATH",
                        help=f"write the table to the GPU section of PATH (default {DOCS})")
    add_device_args(parser, device="cuda", dtype="bfloat16")
    args = parser.parse_args()
    if args.dry_run:
        args.device = "cpu"
    args.rounds = args.rounds or (2 if args.dry_run else 5)
    args.timing_batches = args.timing_batches or (2 if args.dry_run else 4)
    args.gen_rounds = args.gen_rounds or (3 if args.dry_run else 9)
    args.intermediate = args.intermediate or (256 if args.dry_run else 8192)
    return args


def main() -> None:
    args = parse_args()
    device, dtype = check_device(args.device), DTYPES[args.dtype]
    started = time.perf_counter()
    print(f"paper shapes on {device_name(device)} in {args.dtype}" + (" (dry run: small shapes)" if args.dry_run
                                                                        else ""), flush=True)
    rows, _ = paper_shapes(args, device, dtype)
    print("transfer on the CPU (float32) and on the device", flush=True)
    rows += transfer_rows(device, dtype, args.dtype)
    total = time.perf_counter() - started
    lines = [f"device: {device_name(device)}; dtype {args.dtype}; "
             f"{'dry run (small shapes)' if args.dry_run else 'paper shapes'}; torch {torch.__version__}; "
             f"{platform.machine()}, {os.cpu_count()} CPUs; total {total:.0f} s", "", markdown(HEADER, rows)]
    if args.dry_run:
        lines.append("\nDry run: the small shapes check that the code runs; the targets are stated for the paper's.")
    print("\n" + "\n".join(lines))
    if args.write_docs:
        write_section(args.write_docs, "\n".join([KEPT.strip(), "", "Written by `benchmarks/gpu_check.py"
                                                  + (" --dry-run" if args.dry_run else "") + " --write-docs`.", "",
                                                  *lines, ""]))
        print(f"wrote {args.write_docs}")


if __name__ == "__main__":
    main()
