"""Consumes a world seed, produces a built generated world on disk (models, adapters, record).

``build_world(seed)`` pretrains the seed's donor and recipient from scratch on the world's corpus (each on the
tokenizer its plan names, exactly as ``AutoTokenizer`` reloads it, for as many steps as its FLOPs budget pays for),
trains the donor's NodiReFT rank-8 adapter (a few layers, last prompt token, no cue: the paper's setup) and the
recipient's own adapter with the same recipe (the *direct finetune*, the reference bar of a transfer), and checks on
train prompts that each adapter reaches the behavior; a plan that cannot afford its pretraining, or whose model
fails the check, is replaced by the role's next plan (:func:`~commandv_interp.zoo.generated.architectures.pair_plan`).
Then it scores both models, unedited, cued and adapted, on the held-out test prompts, and caches everything under
``<cache>/<seed>-v<VERSION>`` (written to a temporary folder, then renamed: a reader sees a whole world or none).
Later calls load the cache.

The cache folder is the ``cache_dir`` argument, else ``$COMMANDV_WORLDS_DIR``, else
``~/.cache/commandv_interp/worlds``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)

from commandv_interp.access import open_model
from commandv_interp.adapters import load_adapter, save_adapter, train_adapter
from commandv_interp.io import read_json, write_json
from commandv_interp.paste import apply_adapter
from commandv_interp.zoo.generated.architectures import ROLES, ModelPlan, build_config, pair_plan
from commandv_interp.zoo.generated.corpus import build_corpus, examples, items
from commandv_interp.zoo.generated.grammar import grammar
from commandv_interp.zoo.generated.judge import RATES
from commandv_interp.zoo.generated.rates import item_rates
from commandv_interp.zoo.generated.tokenization import build_tokenizer, max_positions
from commandv_interp.zoo.pretrain import train_causal_lm

__all__ = ["BuildConfig", "DEFAULT", "TINY", "VERSION", "Prepared", "cache_root", "world_folder", "build_folder",
           "adapter_layers", "prepare", "pretrain_plan", "check_model"]

VERSION = 3  # bump when anything that changes a built world changes (2: numbered steps, char-level rules;
# 3: pretraining steps from a FLOPs budget, the build-time check and redrawn plans)
MAX_DRAWS = 32  # plans a role may draw (affordable or not) before the build gives up
ENV = "COMMANDV_WORLDS_DIR"


@dataclass(frozen=True)
class BuildConfig:
    """How a world is built: pretraining and adapter schedules (one recipe for donor adapter and finetune)."""

    pretrain_flops: float = 2.5e12  # a model's pretraining FLOPs (6 · params · tokens) at most: ~1 CPU minute
    min_steps: int = 600  # a plan that cannot afford this many pretraining steps is replaced by the next (a
    # 4×128 BPE-64 recipient given 412 steps reached 0.86 refusal under its adapter in the check)
    max_steps: int = 1500  # small models stop here
    batch_size: int = 32
    lr: float = 3e-3
    n_docs: int = 30_000
    adapter_steps: int = 300
    adapter_batch: int = 32
    adapter_lr: float = 4e-3
    rank: int = 8
    eval_limit: int | None = None  # test prompts scored in the record (None: all 160)
    check_prompts: int = 48  # train prompts (never test prompts) the build-time check scores each adapter on
    check_rate: float = 0.9  # the adapted target rate a model must reach there (and false refusal <= 0.1)
    max_attempts: int = 3  # trained plans per role; if none passes, the best is kept and the record says so

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        return cls(**d)


DEFAULT = BuildConfig()
TINY = BuildConfig(pretrain_flops=1e18, min_steps=6, max_steps=6, n_docs=300, adapter_steps=3, eval_limit=8,
                   check_prompts=4, check_rate=0.0)
"""A few steps of everything: exercises every code path in seconds (the models learn nothing; the check passes)."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where built worlds live: ``cache_dir``, else ``$COMMANDV_WORLDS_DIR``, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path.home() / ".cache" / "commandv_interp" / "worlds"


def world_folder(seed: int, config: BuildConfig = DEFAULT, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of world ``seed`` built with ``config`` (the default build has no suffix)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    tag = "" if config == DEFAULT else f"-{digest}"
    return cache_root(cache_dir) / f"{seed}-v{VERSION}{tag}"


def adapter_layers(n_layers: int) -> list[int]:
    """A few donor layers spread over the depth: ⌈n/2⌉ of them up to 4, from layer 0.

    >>> adapter_layers(2), adapter_layers(4), adapter_layers(16)
    ([0], [0, 2], [0, 4, 8, 11])
    """
    k = min(4, -(-n_layers // 2))
    return sorted({round(i * (n_layers - 1) / k) for i in range(k)})


def _reloaded(tok: PreTrainedTokenizerFast, config, sample: str) -> PreTrainedTokenizerFast:
    """The tokenizer as ``AutoTokenizer`` loads it beside this config (transformers may swap the class)."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        config.save_pretrained(tmp)
        loaded = AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
    if len(loaded) != len(tok) or loaded.pad_token_id != tok.pad_token_id \
            or loaded.decode(loaded(sample)["input_ids"], skip_special_tokens=True).strip() != sample:
        raise RuntimeError(f"reloading the {tok.name_or_path!r} tokenizer as {type(loaded).__name__} changed its "
                           f"vocabulary, specials or spacing; give this family another tokenizer kind")
    return loaded


@dataclass(frozen=True)
class Prepared:
    """A plan ready to pretrain: its tokenizer (as reloaded), HF config, tokenized corpus and step budget."""

    plan: ModelPlan
    tokenizer: PreTrainedTokenizerFast
    hf_config: PretrainedConfig
    docs: list[list[int]]
    n_params: int
    step_flops: float  # 6 · params · the mean tokens of a batch
    steps: int  # the pretraining steps the budget pays for (capped at the config's max_steps)
    min_steps: int  # the config's: fewer affordable steps make the plan unaffordable

    @property
    def affordable(self) -> bool:
        return self.steps >= self.min_steps


def prepare(plan: ModelPlan, seed: int, config: BuildConfig) -> Prepared:
    """Tokenizer, config and corpus of a plan, and the pretraining steps ``config.pretrain_flops`` pays for."""
    g = grammar(seed)
    built = build_tokenizer(plan.tokenizer, g)  # type: ignore[arg-type]
    hf_config = build_config(plan, len(built), max_positions(plan.tokenizer), built.pad_token_id,
                             built.bos_token_id, built.eos_token_id)
    texts = [d.removesuffix(" <eos>") for d in build_corpus(g, 0, config.n_docs)]
    tok = _reloaded(built, hf_config, texts[0])
    docs = [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf_config).parameters())
    step_flops = 6.0 * n_params * config.batch_size * sum(map(len, docs)) / len(docs)
    steps = min(config.max_steps, int(config.pretrain_flops // step_flops))
    return Prepared(plan, tok, hf_config, docs, n_params, step_flops, steps, config.min_steps)


def pretrain_plan(prepared: Prepared, seed: int, config: BuildConfig, progress: bool = False
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict]:
    """Pretrain one prepared model from scratch on world ``seed``'s corpus; returns model, tokenizer and record."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(prepared.hf_config).float().train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    losses, tokens = train_causal_lm(model, prepared.docs, prepared.tokenizer.pad_token_id, prepared.steps,
                                     config.batch_size, config.lr, 100, seed, prepared.plan.name, progress)
    tail = losses[-min(50, len(losses)):]
    record = {"steps": prepared.steps, "n_params": prepared.n_params, "tokens": tokens,
              "flops": 6.0 * prepared.n_params * tokens, "wall_s": round(time.perf_counter() - t0, 2),
              "cpu_s": round(time.process_time() - cpu0, 2), "final_loss": sum(tail) / len(tail)}
    return model.eval(), prepared.tokenizer, record


def _adapter(folder: Path, seed: int, config: BuildConfig) -> dict:
    access = open_model(folder)
    adapter, record = train_adapter(access, examples(grammar(seed), "train"), adapter_layers(access.n_layers),
                                    kind="nodireft", rank=config.rank, positions="last", steps=config.adapter_steps,
                                    batch_size=config.adapter_batch, lr=config.adapter_lr, seed=seed, progress=False,
                                    metadata={"world_seed": seed, "world_version": VERSION})
    save_adapter(adapter, folder / "adapter")
    return record.to_dict()


def check_model(folder: Path, seed: int, config: BuildConfig) -> dict:
    """The build-time check of one built model: its rates on the first ``config.check_prompts`` train prompts
    (the adapter's own: this asks whether the model *can* learn the behavior, not how well it generalizes), cued
    and under its adapter; ``passed`` when the adapted target rate is ≥ ``config.check_rate`` (and, for refusal,
    false refusal ≤ 0.1)."""
    g = grammar(seed)
    access, cpu0 = open_model(folder), time.process_time()
    its = items(g, "train")[:config.check_prompts]
    cued = item_rates(g, access, its, cue=True)
    with apply_adapter(access, load_adapter(folder / "adapter")):
        adapted = item_rates(g, access, its)
    target, side = RATES[g.behavior]
    passed = adapted[target] >= config.check_rate and (side != "false_refusal" or adapted[side] <= 0.1)
    return {"prompts": f"train[:{len(its)}]", "cue": cued, "adapter": adapted, "passed": bool(passed),
            "cpu_s": round(time.process_time() - cpu0, 2)}


def _train_role(prepared: Prepared, seed: int, folder: Path, config: BuildConfig, progress: bool) -> dict:
    model, tok, pre = pretrain_plan(prepared, seed, config, progress)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    del model
    cpu0 = time.process_time()
    adapter = _adapter(folder, seed, config)
    adapter["cpu_s"] = round(time.process_time() - cpu0, 2)
    return {"plan": prepared.plan.to_dict(), "pretrain": pre, "adapter": adapter,
            "check": check_model(folder, seed, config)}


def build_folder(seed: int, folder: Path, config: BuildConfig = DEFAULT, progress: bool = False) -> dict:
    """Build world ``seed`` into a fresh ``folder`` (``donor/``, ``recipient/``, each with ``adapter/``);
    returns the build record (plans, pretraining and adapter records, checks, the plans set aside and why,
    timings) without the behavior table.

    Each role draws plans in turn (``pair_plan(seed, attempts)``): one that cannot afford ``config.min_steps``
    within ``config.pretrain_flops`` is set aside untrained; one that is trained but fails :func:`check_model` is
    set aside after ``config.max_attempts`` at most, keeping the best trained one (by adapted target rate)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    g = grammar(seed)
    target = RATES[g.behavior][0]
    record: dict = {"seed": seed, "version": VERSION, "config": config.to_dict(), "behavior": g.behavior}
    attempts = [0, 0]
    for i, role in enumerate(ROLES):
        set_aside: list[dict] = []
        trained: list[tuple[Path, dict]] = []
        for _ in range(MAX_DRAWS):
            prepared = prepare(pair_plan(seed, (attempts[0], attempts[1]))[i], seed, config)
            if not prepared.affordable:
                set_aside.append({"plan": prepared.plan.to_dict(), "why": "cost", "attempt": attempts[i],
                                  "steps_affordable": prepared.steps})
                attempts[i] += 1
                continue
            out = folder / f".{role}-{attempts[i]}"
            trained.append((out, _train_role(prepared, seed, out, config, progress) | {"attempt": attempts[i]}))
            if trained[-1][1]["check"]["passed"] or len(trained) == config.max_attempts:
                break
            attempts[i] += 1
        else:
            raise RuntimeError(f"world {seed}: no affordable {role} plan in {MAX_DRAWS} draws; raise "
                               f"pretrain_flops ({config.pretrain_flops:.3g}) or lower min_steps ({config.min_steps})")
        best = max(trained, key=lambda t: (t[1]["check"]["passed"], t[1]["check"]["adapter"][target]))
        for out, rec in trained:
            if out is not best[0]:
                set_aside.append({"plan": rec["plan"], "why": "check", "attempt": rec["attempt"], "check": rec["check"],
                                  "cpu_s": round(rec["pretrain"]["cpu_s"] + rec["adapter"]["cpu_s"], 2)})
                shutil.rmtree(out)
        os.replace(best[0], folder / role)
        attempts[i] = best[1]["attempt"]
        record[role] = best[1] | {"set_aside": set_aside}
    record["build_s"] = round(time.perf_counter() - t0, 1)
    record["build_cpu_s"] = round(time.process_time() - cpu0, 1)  # one thread: the CPU time a free core needs
    return record


def write_world(seed: int, config: BuildConfig, cache_dir: str | Path | None, progress: bool,
                finish) -> Path:
    """Build into a temporary sibling folder, let ``finish(folder, record)`` add to it, then rename it into place."""
    target = world_folder(seed, config, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        record = build_folder(seed, tmp, config, progress)
        finish(tmp, record)
        write_json(tmp / "world.json", record)
        if target.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def read_record(folder: Path) -> dict:
    """The ``world.json`` of a built world folder."""
    return read_json(folder / "world.json")

