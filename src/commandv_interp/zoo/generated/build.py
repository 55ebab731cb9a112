"""Consumes a world seed, produces a built generated world on disk (models, adapters, record).

``build_world(seed)`` pretrains the seed's donor and recipient from scratch on the world's corpus (each on the
tokenizer its plan names, exactly as ``AutoTokenizer`` reloads it), trains the donor's NodiReFT rank-8 adapter (a
few layers, last prompt token, no cue: the paper's setup) and the recipient's own adapter with the same recipe (the
*direct finetune*, the reference bar of a transfer), scores both and the unedited models on the held-out test
prompts, and caches everything under ``<cache>/<seed>-v<VERSION>`` (written to a temporary folder, then renamed:
a reader sees a whole world or none). Later calls load the cache.

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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from commandv_interp.access import open_model
from commandv_interp.adapters import save_adapter, train_adapter
from commandv_interp.io import read_json, write_json
from commandv_interp.zoo.generated.architectures import ModelPlan, build_config, pair_plan
from commandv_interp.zoo.generated.corpus import build_corpus, examples
from commandv_interp.zoo.generated.grammar import grammar
from commandv_interp.zoo.generated.tokenization import build_tokenizer, max_positions
from commandv_interp.zoo.pretrain import train_causal_lm

__all__ = ["BuildConfig", "DEFAULT", "TINY", "VERSION", "cache_root", "world_folder", "build_folder",
           "adapter_layers", "pretrain_plan"]

VERSION = 2  # bump when anything that changes a built world changes (2: numbered steps, char-level rules)
CHAR_STEPS = 1.5  # char-level models see ~4x the tokens per word: half as many steps again
ENV = "COMMANDV_WORLDS_DIR"


@dataclass(frozen=True)
class BuildConfig:
    """How a world is built: pretraining and adapter schedules (one recipe for donor adapter and finetune)."""

    pretrain_steps: int = 900
    batch_size: int = 32
    lr: float = 3e-3
    n_docs: int = 30_000
    adapter_steps: int = 300
    adapter_batch: int = 32
    adapter_lr: float = 4e-3
    rank: int = 8
    eval_limit: int | None = None  # test prompts scored in the record (None: all 160)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        return cls(**d)


DEFAULT = BuildConfig()
TINY = BuildConfig(pretrain_steps=6, n_docs=300, adapter_steps=3, eval_limit=8)
"""A few steps of everything: exercises every code path in seconds (the models learn nothing)."""


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


def pretrain_plan(plan: ModelPlan, seed: int, config: BuildConfig, progress: bool = False
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict]:
    """Pretrain one planned model from scratch on world ``seed``'s corpus; returns model, tokenizer and record."""
    g = grammar(seed)
    built = build_tokenizer(plan.tokenizer, g)  # type: ignore[arg-type]
    hf_config = build_config(plan, len(built), max_positions(plan.tokenizer), built.pad_token_id,
                             built.bos_token_id, built.eos_token_id)
    texts = [d.removesuffix(" <eos>") for d in build_corpus(g, 0, config.n_docs)]
    tok = _reloaded(built, hf_config, texts[0])
    docs = [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config).float().train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    steps = round(config.pretrain_steps * (CHAR_STEPS if plan.tokenizer == "char" else 1))
    losses, tokens = train_causal_lm(model, docs, tok.pad_token_id, steps, config.batch_size, config.lr, 100, seed,
                                     plan.name, progress)
    n_params = sum(p.numel() for p in model.parameters())
    tail = losses[-min(50, len(losses)):]
    record = {"steps": steps, "n_params": n_params, "tokens": tokens, "flops": 6.0 * n_params * tokens,
              "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - cpu0, 2),
              "final_loss": sum(tail) / len(tail)}
    return model.eval(), tok, record


def _adapter(folder: Path, seed: int, config: BuildConfig) -> dict:
    access = open_model(folder)
    adapter, record = train_adapter(access, examples(grammar(seed), "train"), adapter_layers(access.n_layers),
                                    kind="nodireft", rank=config.rank, positions="last", steps=config.adapter_steps,
                                    batch_size=config.adapter_batch, lr=config.adapter_lr, seed=seed, progress=False,
                                    metadata={"world_seed": seed, "world_version": VERSION})
    save_adapter(adapter, folder / "adapter")
    return record.to_dict()


def build_folder(seed: int, folder: Path, config: BuildConfig = DEFAULT, progress: bool = False) -> dict:
    """Build world ``seed`` into a fresh ``folder`` (``donor/``, ``recipient/``, each with ``adapter/``);
    returns the build record (plans, pretraining and adapter records, timings) without the behavior table."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    record: dict = {"seed": seed, "version": VERSION, "config": config.to_dict(), "behavior": grammar(seed).behavior}
    for plan in pair_plan(seed):
        model, tok, pre = pretrain_plan(plan, seed, config, progress)
        model.save_pretrained(folder / plan.role, safe_serialization=True)
        tok.save_pretrained(folder / plan.role)
        del model
        record[plan.role] = {"plan": plan.to_dict(), "pretrain": pre,
                             "adapter": _adapter(folder / plan.role, seed, config)}
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

