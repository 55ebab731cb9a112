"""Benchmark: the run-time cost of a pasted edit and of profiling, measured side by side in one run.

Everything runs offline on random models (no downloads): a Llama-style recipient (6 blocks × 256 wide by default),
a narrower Llama-style donor, converters fitted with ``method="ridge"`` on profiles of random word prompts, and a
NodiReFT rank-8 donor adapter with random weights at donor layers 0, 2, 4.

Generation (greedy, the same prompts × new tokens, left-padded, every row decodes all tokens):

- ``plain``: Hugging Face ``model.generate`` with no edit, the baseline of every ratio;
- ``plain_cv``: ``ModelAccess.generate`` with no edit (the nnsight trace alone);
- ``paste``: inside ``cv.paste(recipient, adapter, converters)`` (hooks through converters);
- ``compiled``: inside ``cv.apply_adapter(recipient, cv.compile_paste(adapter, converters))``;
- ``naive``: a raw torch forward hook on each mapped HF decoder block that loops over the batch rows in Python,
  like the reference implementation (a baseline written here, not library code).

The script asserts that ``paste``, ``compiled`` and ``naive`` produce the same generations. Profiling compares
``cv.profile`` with a plain forward ``model(**batch)`` over the same prompts and batch size (both tokenize inside the
timed loop). Each mode runs once as warmup, then ``--repeats`` rounds, every round in a fresh random order. The
ratio of a mode is the median over rounds of its time over the baseline's time in the *same* round (paired: on a
shared machine a slow spell hits both), with its quartiles; the ratio of the median times is printed beside it.

Run (about 3 minutes by default with one thread, ~20 s with ``--quick``)::

    HF_HUB_OFFLINE=1 python benchmarks/overhead.py [--quick] [--repeats 15] [--threads 1] [--csv overhead.csv]

``--threads`` defaults to 1: on a 2-core machine shared with other jobs, two OpenMP threads spin against each
other's time slices and made one generation 20× slower in our runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import commandv_interp as cv  # noqa: E402
from commandv_interp.adapters import Adapter, make_intervention  # noqa: E402
from commandv_interp.zoo.tokenization import SPECIALS, word_tokenizer  # noqa: E402

ADAPTER_LAYERS = (0, 2, 4)
RANK = 8
TARGETS = {"paste": "<= 1.05", "compiled": "<= 1.02", "profile": ">= 0.90"}  # stated in issue 7


def random_prompts(tokenizer, n: int, seed: int) -> list[str]:
    """``n`` prompts of 8–24 random vocabulary words (varying length, so batches are padded)."""
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w not in SPECIALS)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 24))) for _ in range(n)]


def random_llama(tokenizer, n_layers: int, d_model: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=4, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # decode every row to the full length, in every mode
    return model


def random_adapter(d_donor: int, seed: int) -> Adapter:
    """NodiReFT rank-8 interventions with random weights, scaled up so that the edit changes generations."""
    torch.manual_seed(seed)
    interventions = {layer: make_intervention("nodireft", d_donor, RANK) for layer in ADAPTER_LAYERS}
    with torch.no_grad():
        for iv in interventions.values():
            iv.proj_layer.weight.mul_(30.0)
    return Adapter(interventions, positions="last")


@contextlib.contextmanager
def naive_hooks(hf_model, adapter: Adapter, converters: cv.Converters, prompt_len: int):
    """Reference-style paste: a forward hook per mapped block, converting each row's last token in a Python loop.

    Edits the prompt pass only (``positions="last"``); with left padding the last prompt token is the last position.
    """
    blocks = hf_model.model.layers
    handles = []
    for donor_layer, iv in sorted(adapter.interventions.items()):
        pair = converters.for_donor_layer(donor_layer)
        to_donor, to_recipient = pair.to_donor.weight.float(), pair.to_recipient.weight.float()
        bias = pair.to_donor.bias.float() if pair.to_donor.bias is not None else torch.zeros(to_donor.shape[0])

        def hook(module, args, output, iv=iv, to_donor=to_donor, to_recipient=to_recipient, bias=bias):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] != prompt_len:  # a decode step
                return None
            hidden = hidden.clone()
            for row in range(hidden.shape[0]):
                h = hidden[row, -1]
                delta = iv.delta(to_donor @ h + bias)
                hidden[row, -1] = h + to_recipient @ delta
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

        handles.append(blocks[pair.recipient_layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def time_round_robin(modes: dict[str, Callable[[], object]], repeats: int, seed: int = 0
                     ) -> tuple[dict[str, list[float]], dict]:
    """One warmup call per mode, then ``repeats`` rounds over all modes, each round in a fresh random order (so no
    mode always runs first or right after another); returns (times, warmup outputs). ``times[m][i]`` is round i."""
    outputs = {name: fn() for name, fn in modes.items()}
    times: dict[str, list[float]] = {name: [] for name in modes}
    order = list(modes)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            modes[name]()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def generation_modes(recipient, hf_model, adapter, converters, compiled, batch, new_tokens):
    """Each mode generates from ``batch`` and returns decoded continuations (same decoding for all)."""
    n_prompt = batch.input_ids.shape[1]

    def hf_generate():
        with torch.no_grad():
            ids = hf_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=recipient.tokenizer.pad_token_id)
        return recipient.decode_continuations(ids[:, n_prompt:])

    def pasted():
        with cv.paste(recipient, adapter, converters, positions="last"):
            return recipient.generate(batch, new_tokens)

    def native():
        with cv.apply_adapter(recipient, compiled):
            return recipient.generate(batch, new_tokens)

    def naive():
        with naive_hooks(hf_model, adapter, converters, n_prompt):
            return hf_generate()

    return {"plain": hf_generate, "plain_cv": lambda: recipient.generate(batch, new_tokens),
            "paste": pasted, "compiled": native, "naive": naive}


def profile_modes(recipient, hf_model, prompts, batch_size):
    def plain_forward():
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = recipient.encode(prompts[start:start + batch_size])
                hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    return {"forward": plain_forward,
            "profile": lambda: cv.profile(recipient, prompts, batch_size=batch_size, progress=False)}


def check_generations(outputs: dict[str, list[str]]) -> int:
    """Assert that the three edited modes agree; return how many rows the edit changed vs plain."""
    for name in ("compiled", "naive"):
        bad = [i for i, (a, b) in enumerate(zip(outputs["paste"], outputs[name])) if a != b]
        assert not bad, f"{name} differs from paste on rows {bad}"
    assert outputs["plain"] == outputs["plain_cv"], "plain HF and ModelAccess generations differ"
    return sum(a != b for a, b in zip(outputs["plain"], outputs["paste"]))


def rows_for(benchmark: str, times: dict[str, list[float]], baseline: str, work: float, unit: str) -> list[dict]:
    """One row per mode. ``ratio``: the median over rounds of the mode's time over the baseline's time *in the same
    round* (paired, so a slow spell of a shared machine hits both), inverted to a throughput ratio for profiling;
    ``ratio_q25``/``ratio_q75`` its quartiles; ``ratio_of_medians`` and ``ratio_min`` (of minima) for reference."""
    base, base_min = statistics.median(times[baseline]), min(times[baseline])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = [t / b for t, b in zip(ts, times[baseline])]
        if unit == "prompts/s":
            paired = [1 / x for x in paired]
            of_medians, of_minima = base / med, base_min / min(ts)
        else:
            of_medians, of_minima = med / base, min(ts) / base_min
        q25, _, q75 = statistics.quantiles(paired, n=4) if len(paired) > 1 else (paired[0],) * 3
        rows.append({"benchmark": benchmark, "mode": name, "median_s": med, "min_s": min(ts),
                     "rate": work / med, "unit": unit, "ratio": statistics.median(paired), "ratio_q25": q25,
                     "ratio_q75": q75, "ratio_of_medians": of_medians, "ratio_min": of_minima,
                     "target": TARGETS.get(name, ""), "repeats": len(ts)})
    return rows


def print_table(title: str, rows: list[dict], ratio_label: str) -> None:
    print(f"\n{title}")
    print(f"{'mode':<10} {'median s':>9} {'min s':>8} {'rate':>18} {ratio_label:>13} {'quartiles':>15} "
          f"{'of medians':>11} {'target':>8}")
    for r in rows:
        rate = f"{r['rate']:.1f} {r['unit']}"
        quartiles = f"[{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}]"
        print(f"{r['mode']:<10} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {rate:>18} {r['ratio']:>13.3f} "
              f"{quartiles:>15} {r['ratio_of_medians']:>11.3f} {r['target']:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer prompts and tokens")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    parser.add_argument("--csv", default=None, help="write the numbers to this CSV file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d_recipient, d_donor, n_profile, n_gen, new_tokens = (128, 96, 64, 16, 8) if args.quick else (256, 192, 128, 64, 32)
    repeats = args.repeats or (3 if args.quick else 15)

    tokenizer = word_tokenizer()
    hf_recipient = random_llama(tokenizer, 6, d_recipient, seed=1)
    recipient = cv.open_model(hf_recipient, tokenizer=tokenizer, name=f"recipient-6x{d_recipient}")
    donor = cv.open_model(random_llama(tokenizer, 6, d_donor, seed=2), tokenizer=tokenizer, name=f"donor-6x{d_donor}")
    profile_prompts = random_prompts(tokenizer, n_profile, seed=0)
    print(f"setup: recipient 6x{d_recipient}, donor 6x{d_donor}, {n_profile} profile prompts, "
          f"threads={args.threads}, repeats={repeats}")
    start = time.perf_counter()
    p_donor = cv.profile(donor, profile_prompts, progress=False)
    p_recipient = cv.profile(recipient, profile_prompts, progress=False)
    layer_map = cv.match_layers(p_donor, p_recipient, method="depth")
    converters = cv.fit_converters(p_donor, p_recipient, layer_map, method="ridge")
    adapter = random_adapter(d_donor, seed=3)
    compiled = cv.compile_paste(adapter, converters)
    print(f"profiles + converters + compile: {time.perf_counter() - start:.1f} s")

    batch = recipient.encode(random_prompts(tokenizer, n_gen, seed=1), padding_side="left")
    print(f"timing generation: {n_gen} prompts x {new_tokens} new tokens ...")
    times, outputs = time_round_robin(
        generation_modes(recipient, hf_recipient, adapter, converters, compiled, batch, new_tokens), repeats)
    changed = check_generations(outputs)
    print(f"paste == compiled == naive on all {n_gen} rows; the edit changed {changed}/{n_gen} rows vs plain")
    gen_rows = rows_for("generation", times, "plain", n_gen * new_tokens, "tok/s")
    print(f"timing profiling: {n_profile} prompts, batch size 32 ...")
    times, _ = time_round_robin(profile_modes(recipient, hf_recipient, profile_prompts, 32), repeats)
    prof_rows = rows_for("profiling", times, "forward", n_profile, "prompts/s")

    print_table("generation (ratio = median over rounds of time / plain HF generate's time in that round)", gen_rows,
                "time / plain")
    print_table("profiling (ratio = median over rounds of profile throughput / forward throughput)", prof_rows,
                "thru / fwd")
    if args.csv:
        config = {"quick": args.quick, "threads": args.threads, "d_recipient": d_recipient, "d_donor": d_donor,
                  "n_gen": n_gen, "new_tokens": new_tokens, "n_profile": n_profile}
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(gen_rows[0]) + list(config))
            writer.writeheader()
            writer.writerows(row | config for row in gen_rows + prof_rows)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
