"""Benchmark: Command-V at the paper's widths on CPU (issue 20): profiling, paste entry, generation and storage.

Two random Llama models are built offline from configs at the widths and depths of the paper's pair, with a small
MLP (to keep CPU runs short) and the word-level tokenizer of :func:`~commandv_interp.zoo.tokenization.word_tokenizer`:

- donor: hidden 3072, 28 blocks, 24 heads of 128, 8 KV heads (Llama-3.2-3B's shape);
- recipient: hidden 2048, 16 blocks, 32 heads of 64, 8 KV heads (Llama-3.2-1B's shape);
- both: MLP width ``--intermediate`` (default 1024); ``--vocab`` rows of embedding and head (default: Llama 3's
  128,256, the paper's models' own; with ``--quick`` the tokenizer's 208). The prompts use the tokenizer's ids
  either way. The vocabulary decides how much a profile can save over a forward: at 208 the final norm and head are
  a fraction of a percent of a forward, so a profile of every block costs what a forward costs; at 128,256 the head
  is a real part of it (with this small MLP a larger part than at the real MLP width of 8192).

The donor adapter is the reference NodiReFT adapter (rank 8, 14 layers) read with ``cv.load_adapter``. With
``--quick`` the models are small (donor 192 × 6, recipient 128 × 4) and the adapter is the reference adapter's first
layers cut to the quick donor's width (same kind, rank and positions; a cost stand-in, not a trained edit).

What is measured (times are CPU seconds, see :class:`Stages`):

- profiling time: the first ``--timing-batches`` of the profile's batches (prompts of 4–10 words, batch 32,
  left-padded) go one by one through a plain Hugging Face forward ``model(**batch)`` of the donor and of the
  recipient, and through ``read`` of every layer (what ``cv.profile`` runs per batch) of both and of the donor's
  lower half, in a fresh random order per batch. A ratio is the total time of a read over the forward's in the same
  round (so a slow spell of a shared machine hits both), the median over ``--rounds`` rounds;
- profiling memory: a whole forward loop and a whole ``cv.profile`` over the 256 prompts of each model, in a random
  order, in a fresh Python process that rebuilds the models from their seeds and warms each up on its widest batch.
  That process runs with glibc's ``MALLOC_MMAP_THRESHOLD_=131072``, so every block of 128 KiB or more is its own
  mapping: glibc's default threshold moves with the sizes freed, and a profile's small long-lived rows then land on
  the heap between the forward's transient tensors and pin its pages; the recipient's profile peaked anywhere from
  85 to 283 MiB above its start in our runs, the heap's history rather than the profile. With the fixed threshold the
  peak follows the live tensors; its page faults cost about 30% of time, which is why the timing runs elsewhere.
  Target: a profile's peak against the forward's peak plus the profile's own bytes;
- converters: ``cv.match_layers(method="depth")`` for the adapter's layers and ``cv.fit_converters(method="ridge")``
  on the two profiles of the memory runs; storage is the bytes ``Converters.save`` writes;
- paste entry: the time to enter ``cv.paste(recipient, adapter, converters)``, against a plain generation of
  16 prompts × 16 new tokens (greedy; every row decodes all 16 tokens);
- generation (16 × 16): plain ``model.generate``; ``recipient.generate`` without edits (``plain_cv``), inside the
  paste (entered before the timer) and inside ``cv.apply_adapter(recipient, cv.compile_paste(...))``, in a random
  order per round over ``--gen-rounds`` rounds; ratios are paired per round like the profiling ones.

Peak memory: ``scaling.PeakRSS`` (a thread samples ``/proc/self/statm`` every millisecond while a stage runs; before
it ``gc.collect()`` and glibc's ``malloc_trim(0)`` return freed memory; ``tracemalloc`` does not see torch's tensors).

Run (``--quick``: about 30 CPU seconds; the full run about 20 CPU minutes)::

    HF_HUB_OFFLINE=1 python benchmarks/realwidth.py [--quick] [--vocab V] [--rounds R] [--timing-batches B]
        [--gen-rounds G] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--write-docs [PATH]]

``--device``/``--dtype`` place both models (built on the device, then cast); on CUDA the stages are timed in wall
time with the device synchronized and metered in allocated device memory (see ``devices.py``).

``--write-docs`` writes the tables to ``docs/realwidth.md`` (or PATH). ``--threads`` defaults to 1 (see overhead.py:
two OpenMP threads on a shared 2-core machine spin against each other).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

import commandv_interp as cv  # noqa: E402
from commandv_interp.zoo.tokenization import word_tokenizer  # noqa: E402
from devices import DTYPES, DevicePeak, add_device_args, check_device, synchronize  # noqa: E402
from realwidth_models import (BATCH_SIZE, DOCS, LLAMA3_VOCAB, MIB, REFERENCE_ADAPTER, SETUPS, Setup,  # noqa: E402,F401
                              Shape, random_llama, random_prompts, reference_adapter)
from realwidth_report import (KEPT, STAGE_HEADER, TARGET_HEADER, markdown, stage_rows,  # noqa: E402,F401
                              target_rows, write_docs)

class Stages:
    """Runs named stages, recording each run's wall seconds, CPU seconds and peak MiB (in run order).

    On CPU ratios use CPU time (``time.process_time``): with one torch thread the work runs on the calling thread,
    and CPU time counts only the time the process ran, so another job on a shared machine inflates it far less than
    wall time. The RSS sampler's own CPU time is in every stage alike. On CUDA the work runs on the device, so ratios
    use wall time, each stage ending with the device synchronized."""

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.runs: dict[str, list[tuple[float, float, float]]] = {}
        self.device = device
        self.basis = 1 if device.type == "cpu" else 0  # the field ratios use: CPU seconds, or wall seconds on CUDA

    def run(self, name: str, fn: Callable[[], object]) -> object:
        with DevicePeak(self.device) as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            synchronize(self.device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.runs.setdefault(name, []).append((wall, cpu, mem.mb))
        return out

    def median(self, name: str, field: int) -> float:
        """Median over runs of the wall seconds (0), CPU seconds (1) or peak MiB (2)."""
        return statistics.median(run[field] for run in self.runs[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per round, ``name``'s time (CPU time; wall time on CUDA) over ``baseline``'s in the same round."""
        times = lambda n: [run[self.basis] for run in self.runs[n]]  # noqa: E731
        return [a / b for a, b in zip(times(name), times(baseline))]

    def paired(self, name: str, baseline: str) -> float:
        """Median over rounds of :meth:`ratios`."""
        return statistics.median(self.ratios(name, baseline))

    def spread(self, name: str, baseline: str) -> str:
        """The quartiles of :meth:`ratios` over its rounds (how much a shared machine moved them)."""
        ratios = self.ratios(name, baseline)
        if len(ratios) < 4:
            return f"{len(ratios)} round(s)"
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        return f"quartiles {q1:.3f}–{q3:.3f} over {len(ratios)} rounds"


# -- stages ---------------------------------------------------------------------------------------------------------
def forward(model: LlamaForCausalLM, batch) -> None:
    batch = batch.to(model.device)
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def timing_rounds(stages: Stages, donor, hf_donor, recipient, hf_recipient, batches, rounds: int, seed: int) -> None:
    """``rounds`` rounds over the batches, the five modes in a fresh random order per batch; a mode's run in a round
    is its total over the batches (peak memory is not measured here)."""
    n_low = donor.n_layers // 2
    modes = {
        "donor forward": lambda b: forward(hf_donor, b),
        "donor profile (all)": lambda b: donor.read(b, range(donor.n_layers)),
        f"donor profile (0-{n_low - 1})": lambda b: donor.read(b, range(n_low)),
        "recipient forward": lambda b: forward(hf_recipient, b),
        "recipient profile (all)": lambda b: recipient.read(b, range(recipient.n_layers)),
    }
    rng = random.Random(seed)
    with torch.no_grad():
        for access, model in ((donor, hf_donor), (recipient, hf_recipient)):  # warmup: first-call costs
            forward(model, batches[0])
            access.read(batches[0], range(access.n_layers))
        for i in range(rounds):
            totals = {name: [0.0, 0.0] for name in modes}
            for batch in batches:
                order = list(modes)
                rng.shuffle(order)
                for name in order:
                    wall, cpu = time.perf_counter(), time.process_time()
                    modes[name](batch)
                    synchronize(stages.device)
                    totals[name][0] += time.perf_counter() - wall
                    totals[name][1] += time.process_time() - cpu
            for name, (wall, cpu) in totals.items():
                stages.runs.setdefault(name, []).append((wall, cpu, float("nan")))
            print(f"  round {i + 1}/{rounds}: " + ", ".join(f"{n} {c:.1f} s" for n, (_, c) in totals.items()),
                  flush=True)


MEMORY_STAGES = ("donor forward", "donor profile (all)", "recipient forward", "recipient profile (all)")


def memory_child(args, setup: Setup) -> None:
    """``--memory-out DIR`` (internal): the memory stages in this fresh process, in a random order, after a warmup on
    the widest batch; writes ``runs.json`` and the two profiles to ``DIR``."""
    tokenizer = word_tokenizer()
    prompts = random_prompts(tokenizer, setup.n_profile, seed=0)
    widest = sorted(prompts, key=len)[-BATCH_SIZE:]
    device, dtype = check_device(args.device), DTYPES[args.dtype]
    stages, todo = Stages(device), {}
    with torch.no_grad():
        for model_name, shape, seed in (("donor", setup.donor, 1), ("recipient", setup.recipient, 2)):
            model = random_llama(tokenizer, shape, args.intermediate, seed=seed, vocab=args.vocab, device=device,
                                 dtype=dtype)
            access = cv.open_model(model, tokenizer=tokenizer, name=model_name)
            forward(model, access.encode(widest, padding_side="left"))  # warmup: allocator and kernel set-up
            cv.profile(access, widest, batch_size=BATCH_SIZE, progress=False)
            todo[f"{model_name} forward"] = lambda access=access, model=model: forward_loop(access, model, prompts)
            todo[f"{model_name} profile (all)"] = lambda access=access: cv.profile(
                access, prompts, batch_size=BATCH_SIZE, progress=False)
        order = list(MEMORY_STAGES)
        random.Random(0).shuffle(order)
        for name in order:
            out = stages.run(f"memory: {name}", todo[name])
            if out is not None:
                out.save(Path(args.memory_out) / f"{name.split()[0]}.safetensors")
            del out
            wall, cpu, peak = stages.runs[f"memory: {name}"][-1]
            print(f"  {name:<24} {wall:8.1f} s wall {cpu:8.1f} s CPU {peak:8.1f} MiB", flush=True)
    (Path(args.memory_out) / "runs.json").write_text(json.dumps(stages.runs))


def forward_loop(access, model, prompts: list[str]) -> None:
    """A plain forward over the batches ``cv.profile`` makes, tokenized in the loop as the profile does."""
    for start in range(0, len(prompts), BATCH_SIZE):
        forward(model, access.encode(prompts[start:start + BATCH_SIZE], padding_side="left"))


def memory_stages(args, workdir: Path) -> tuple[dict, dict[str, cv.ActivationProfile]]:
    """Runs :func:`memory_child` in a fresh process with the fixed mmap threshold (see the module docstring);
    returns its ``Stages.runs`` and the two profiles."""
    flags = ["--quick"] * args.quick + ["--intermediate", str(args.intermediate), "--threads", str(args.threads),
                                        "--vocab", str(args.vocab), "--device", args.device, "--dtype", args.dtype]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    subprocess.run([sys.executable, __file__, *flags, "--memory-out", str(workdir)], env=env, check=True)
    runs = json.loads((workdir / "runs.json").read_text())
    profiles = {model: cv.ActivationProfile.load(workdir / f"{model}.safetensors") for model in ("donor", "recipient")}
    return runs, profiles


def generation_stages(stages: Stages, recipient, hf_recipient, adapter, converters, compiled, batch,
                      new_tokens: int, rounds: int, seed: int) -> dict[str, list[str]]:
    """Plain/plain_cv/paste/compiled generation (one untimed warmup each, then ``rounds`` rounds in a fresh random
    order); an edit's context is entered before the generation's timer, its entry timed as a stage of its own.
    Returns the warmup's continuations per mode."""
    n_prompt = batch.input_ids.shape[1]
    contexts = {
        "generate plain": None,
        "generate plain_cv": None,
        "generate paste": ("paste entry", lambda: cv.paste(recipient, adapter, converters)),
        "generate compiled": ("compiled entry", lambda: cv.apply_adapter(recipient, compiled)),
    }

    def plain() -> list[str]:
        on = batch.to(hf_recipient.device)
        ids = hf_recipient.generate(input_ids=on.input_ids, attention_mask=on.attention_mask,
                                    max_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=recipient.tokenizer.pad_token_id)
        return recipient.decode_continuations(ids[:, n_prompt:].cpu())

    def run(into: Stages, name: str) -> list[str]:
        if name == "generate plain":
            return into.run(name, plain)
        with contextlib.ExitStack() as stack:
            if contexts[name] is not None:
                entry, context = contexts[name]
                into.run(entry, lambda: stack.enter_context(context()))
            return into.run(name, lambda: recipient.generate(batch, new_tokens))

    with torch.no_grad():
        outputs = {name: run(Stages(stages.device), name) for name in contexts}  # warmup: first-call costs
        rng = random.Random(seed)
        for _ in range(rounds):
            order = list(contexts)
            rng.shuffle(order)
            for name in order:
                run(stages, name)
    return outputs


def storage_bytes(converters: cv.Converters) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = converters.save(Path(tmp) / "converters")
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files)


def after_last_block(model: LlamaForCausalLM) -> float:
    """The share of a model's parameters in its final norm and head (what a read stopped after a block skips)."""
    after = sum(p.numel() for m in (model.model.norm, model.lm_head) for p in m.parameters())
    return after / sum(p.numel() for p in model.parameters())


def profile_bytes(profile: cv.ActivationProfile) -> int:
    return sum(a.numel() * a.element_size() for a in profile.activations.values())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and 64 profile prompts (< 1 minute)")
    parser.add_argument("--rounds", type=int, default=None, help="profiling time rounds (default: quick 3, full 3)")
    parser.add_argument("--timing-batches", type=int, default=None,
                        help="batches of the profiling time rounds (default: quick all 2, full 4 of 8)")
    parser.add_argument("--gen-rounds", type=int, default=None, help="generation rounds (default: quick 5, full 9)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="rows of embedding and head (default: Llama 3's 128256; quick: the tokenizer's 208)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default: full 1024, quick 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--write-docs", nargs="?", const=DOCS, type=Path, default=None, metavar="PATH",
                        help=f"write the tables to PATH (default {DOCS})")
    add_device_args(parser)
    parser.add_argument("--memory-out", help=argparse.SUPPRESS)  # internal: run the memory stages, write here
    args = parser.parse_args()
    args.intermediate = args.intermediate or (256 if args.quick else 1024)
    args.rounds = args.rounds or 3
    args.gen_rounds = args.gen_rounds or (5 if args.quick else 9)
    args.vocab = max(args.vocab or (0 if args.quick else LLAMA3_VOCAB), len(word_tokenizer()))
    args.timing_batches = args.timing_batches or (2 if args.quick else 4)
    return args


def main() -> None:
    args = parse_args()
    setup = SETUPS["quick" if args.quick else "full"]
    torch.set_num_threads(args.threads)
    if args.memory_out:
        return memory_child(args, setup)
    device, dtype = check_device(args.device), DTYPES[args.dtype]
    started, stages = time.perf_counter(), Stages(device)
    print(f"profiling memory: whole runs over {setup.n_profile} prompts in a fresh process", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs, profiles = memory_stages(args, workdir=Path(tmp))
    stages.runs.update(runs)

    tokenizer = word_tokenizer()
    hf_donor = random_llama(tokenizer, setup.donor, args.intermediate, seed=1, vocab=args.vocab, device=device,
                            dtype=dtype)
    hf_recipient = random_llama(tokenizer, setup.recipient, args.intermediate, seed=2, vocab=args.vocab,
                                device=device, dtype=dtype)
    donor = cv.open_model(hf_donor, tokenizer=tokenizer, name="donor")
    recipient = cv.open_model(hf_recipient, tokenizer=tokenizer, name="recipient")
    prompts = random_prompts(tokenizer, BATCH_SIZE * args.timing_batches, seed=0)  # the memory runs' first batches
    batches = [donor.encode(prompts[start:start + BATCH_SIZE], padding_side="left")
               for start in range(0, len(prompts), BATCH_SIZE)]
    print(f"profiling time: {len(batches)} batches, {args.rounds} round(s)", flush=True)
    timing_rounds(stages, donor, hf_donor, recipient, hf_recipient, batches, args.rounds, seed=0)

    adapter = reference_adapter(setup.donor)
    layer_map = stages.run("match layers", lambda: cv.match_layers(profiles["donor"], profiles["recipient"],
                                                                   method="depth", donor_layers=adapter.layers))
    converters = stages.run("fit converters", lambda: cv.fit_converters(profiles["donor"], profiles["recipient"],
                                                                        layer_map, method="ridge"))
    compiled = stages.run("compile paste", lambda: cv.compile_paste(adapter, converters))
    sizes, storage = {model: profile_bytes(p) for model, p in profiles.items()}, storage_bytes(converters)
    del profiles

    batch = recipient.encode(random_prompts(tokenizer, setup.n_gen, seed=1), padding_side="left")
    print(f"generation: {setup.n_gen} prompts × {setup.new_tokens} tokens, {args.gen_rounds} round(s)", flush=True)
    outputs = generation_stages(stages, recipient, hf_recipient, adapter, converters, compiled, batch,
                                setup.new_tokens, args.gen_rounds, seed=1)
    agree = sum(a == b for a, b in zip(outputs["generate paste"], outputs["generate compiled"]))
    changed = sum(a != b for a, b in zip(outputs["generate plain"], outputs["generate paste"]))
    notes = [f"paste and compiled generations agree on {agree}/{setup.n_gen} rows; the paste changed {changed}/"
             f"{setup.n_gen} rows against plain; plain HF and `recipient.generate` agree: "
             f"{outputs['generate plain'] == outputs['generate plain_cv']}.",
             "Stopping a profile after its deepest block saves at most what follows the last block, the final norm "
             "and the head: " + ", ".join(f"{name} {after_last_block(model):.2%}" for name, model in
                                          (("donor", hf_donor), ("recipient", hf_recipient)))
             + " of the parameters here.",
             f"Total run time {time.perf_counter() - started:.0f} s."]
    targets, table = target_rows(stages, setup, sizes, storage), stage_rows(stages)
    print("\n" + markdown(STAGE_HEADER, table) + "\n\n" + markdown(TARGET_HEADER, targets) + "\n\n" + "\n".join(notes))
    if args.write_docs:
        write_docs(args.write_docs, setup, args, targets, table, notes)
        print(f"wrote {args.write_docs}")


if __name__ == "__main__":
    main()
