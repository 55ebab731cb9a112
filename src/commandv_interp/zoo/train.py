"""Consumes seeds, produces the whole shipped zoo (checkpoints, donor adapters, manifest).

``python -m commandv_interp.zoo.train`` regenerates everything from seeds: it pretrains each base model from
scratch on the world corpus, trains one NodiReFT rank-8 adapter per model and behavior (every other layer, last
prompt token, no cue in the prompts: the paper's setup), scores the behavior table on held-out test prompts and
writes ``manifest.json``; ``--world heldout`` does the same for the held-out world into ``zoo/data/heldout``.
Pretraining dominates: 26–35 min per model with three running side by side on 2 CPU
cores (``python -m commandv_interp.zoo.pretrain --model NAME --out DIR`` per model, then this with ``--out DIR
--reuse``); one after another in this process, expect well over an hour. The manifest records each artifact's
training wall time, also when ``--reuse`` kept it. ``--quick`` runs a few steps of everything (about a minute) so
the code path is exercised in the tests.

The adapter of a model doubles as the *direct ReFT finetune* baseline when that model is the recipient of a
transfer: its training record (steps, wall time, FLOPs) is the finetune's cost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from commandv_interp.version import __version__
from commandv_interp.access import open_model
from commandv_interp.adapters import load_adapter, save_adapter, train_adapter
from commandv_interp.io import read_json, write_json
from commandv_interp.zoo.architectures import SPECS, spec
# DATA stays importable from here: the CLI's default --out
from commandv_interp.zoo.catalog import DATA, MANIFEST, file_digest, world_dir  # noqa: F401
from commandv_interp.zoo.evaluate import behavior_table, format_behavior_table
from commandv_interp.zoo.tokenization import build_tokenizer
from commandv_interp.zoo.pretrain import RECORD_FILE, pretrain, save_checkpoint, tokenization_digest, training_tokenizer
from commandv_interp.zoo.world import WORLDS, Behavior, World, WorldLike, examples, get_world, world_fingerprint

__all__ = ["AdapterRecipe", "RECIPE", "QUICK", "train_zoo", "main"]

@dataclass(frozen=True)
class AdapterRecipe:
    """How the zoo's donor adapters are trained (the paper's NodiReFT setup)."""

    kind: str = "nodireft"
    rank: int = 8
    positions: str = "last"
    layer_stride: int = 2  # every other layer, from layer 0
    steps: int = 400
    batch_size: int = 32
    lr: float = 4e-3
    # CoT's targets are ~40 tokens that the model must continue on its own after the edited last prompt token: at
    # 400 steps gpt2's adapter broke off mid-solution in 0.14 of test prompts (0.11 at 1,000 steps, 0.10 at 2,000)
    steps_by_behavior: dict[str, int] = field(default_factory=lambda: {"cot": 2000})

    def steps_for(self, behavior: str) -> int:
        return self.steps_by_behavior.get(behavior, self.steps)


RECIPE = AdapterRecipe()
QUICK = {"pretrain_steps": 15, "n_docs": 2000, "adapter_steps": 4, "eval_limit": 8}


def _pretrained(name: str, out: Path, seed: int, quick: bool, reuse: bool, progress: bool,
                world: World) -> tuple[dict, bool]:
    """The pretraining record of ``name`` and whether it was (re)trained just now (its adapters must be too)."""
    folder = out / name
    record_path = folder / RECORD_FILE
    if reuse and record_path.is_file():
        record = read_json(record_path)
        wanted = QUICK["pretrain_steps"] if quick else world.models[name]
        # checkpoints from before the digest was recorded were trained on the tokenizer as built
        trained_on = record.get("tokenization_digest") or tokenization_digest(
            build_tokenizer(spec(name).tokenizer, world), world)  # type: ignore[arg-type]
        now = tokenization_digest(training_tokenizer(name, world), world)
        if (record["seed"], record["steps"], record["world_fingerprint"], trained_on) \
                == (seed, wanted, world_fingerprint(world), now):
            record["tokenization_digest"] = trained_on
            write_json(record_path, record)
            return record, False
    kwargs = dict(steps=QUICK["pretrain_steps"], n_docs=QUICK["n_docs"]) if quick else {}
    model, tok, record = pretrain(name, seed=seed, progress=progress, world=world, **kwargs)
    save_checkpoint(model, tok, folder, record)
    return record.to_dict(), True


def _adapter(name: str, behavior: Behavior, out: Path, seed: int, quick: bool, reuse: bool, progress: bool,
             world: World) -> dict:
    access = open_model(out / name, name=name)  # the shipped float16 weights, as users load them
    layers = list(range(0, access.n_layers, RECIPE.layer_stride))
    steps = QUICK["adapter_steps"] if quick else world.adapter_steps.get(behavior, RECIPE.steps_for(behavior))
    folder = out / name / "adapters" / behavior
    weights = file_digest(out / name / "model.safetensors")
    if reuse and folder.is_dir():
        meta = load_adapter(folder).metadata
        if (meta.get("world_fingerprint"), meta.get("config_hash"), meta["training"]["steps"], meta["training"]["seed"],
                meta.get("base_weights", weights)) \
                == (world_fingerprint(world), access.config_hash, steps, seed, weights):
            return {"layers": layers, "kind": RECIPE.kind, "rank": RECIPE.rank, "positions": RECIPE.positions,
                    "training": meta["training"]}
    adapter, record = train_adapter(
        access, examples(behavior, "train", world), layers, kind=RECIPE.kind, rank=RECIPE.rank,
        positions=RECIPE.positions, steps=steps,
        batch_size=RECIPE.batch_size, lr=RECIPE.lr, seed=seed, progress=progress,
        metadata={"behavior": behavior, "zoo_model": name, "world": world.name,
                  "world_fingerprint": world_fingerprint(world), "base_weights": weights})
    save_adapter(adapter, folder)
    return {"layers": layers, "kind": RECIPE.kind, "rank": RECIPE.rank, "positions": RECIPE.positions,
            "training": record.to_dict()}


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def train_zoo(out: str | Path | None = None, models: list[str] | None = None, seed: int = 0, quick: bool = False,
              reuse: bool = False, progress: bool = True, world: WorldLike = None) -> dict:
    """Regenerate a world's zoo into ``out`` and return the manifest written there.

    Args:
        out: destination folder (default: the world's shipped folder, ``zoo/data`` for the main world).
        models: zoo model names (default: all of the world's).
        seed: seeds pretraining and adapter training.
        quick: a few steps of everything (for tests; the models learn nothing).
        reuse: keep an existing checkpoint (and adapters) whose record matches (seed, steps, world) instead of
            training again.
        world: a ``World`` or its name (``None``: the main world).
    """
    w = get_world(world)
    out = Path(out) if out is not None else world_dir(w)
    models = sorted(w.models) if models is None else models
    for name in models:
        spec(name)
        if name not in w.models:
            raise ValueError(f"zoo model {name!r} is not in the {w.name!r} world; its models: {sorted(w.models)}")
    timings, entries, adapters = {}, {}, {}
    # each artifact's own training time, from its record: a run with --reuse does not report reused ones as ~0 s
    for name in models:
        record, fresh = _pretrained(name, out, seed, quick, reuse, progress, w)
        timings[f"pretrain/{name}"] = round(record["wall_s"], 1)
        entry = {"spec": spec(name).to_dict(), "pretrain": record, "adapters": {}}
        for behavior in w.behaviors:
            entry["adapters"][behavior] = _adapter(name, behavior, out, seed, quick, reuse and not fresh, progress, w)
            timings[f"adapter/{name}/{behavior}"] = round(entry["adapters"][behavior]["training"]["wall_time_s"], 1)
            adapters[(name, behavior)] = load_adapter(out / name / "adapters" / behavior)
        entries[name] = entry
    t0 = time.perf_counter()
    accesses = {name: open_model(out / name, name=name) for name in models}
    table = behavior_table(accesses, adapters, w.behaviors, limit=QUICK["eval_limit"] if quick else None,
                           progress=progress, world=w)
    timings["behavior_table"] = round(time.perf_counter() - t0, 1)
    for name in models:
        entries[name]["files"] = _files(out / name)
        entries[name]["n_params"] = record_params(out / name)
    manifest = {"library_version": __version__, "world": w.name, "world_fingerprint": world_fingerprint(w),
                "seed": seed,
                "quick": quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "adapter_recipe": {**RECIPE.__dict__,
                                   "steps_by_behavior": {**RECIPE.steps_by_behavior, **w.adapter_steps}},
                "models": entries, "timings_s": timings,
                "behavior_table": table.to_dict(orient="records"),
                "command": "python -m commandv_interp.zoo.train" + (f" --world {w.name}" if w.name != "main" else "")
                + (" --quick" if quick else "")}
    write_json(out / MANIFEST, manifest)
    return manifest


def record_params(folder: Path) -> int:
    """Number of parameters of a checkpoint (from its safetensors header, without loading the weights)."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the zoo (base models, donor adapters, manifest) "
                                                 "from seeds.")
    parser.add_argument("--world", choices=sorted(WORLDS), default="main", help="which world's zoo (default: main)")
    parser.add_argument("--out", type=Path, default=None, help="destination folder (default: the world's shipped "
                                                                "folder)")
    parser.add_argument("--model", choices=sorted(SPECS), action="append", default=None, help="one model (repeat)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (tests the code path)")
    parser.add_argument("--reuse", action="store_true", help="keep matching checkpoints and adapters in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = train_zoo(args.out, args.model, args.seed, args.quick, args.reuse, not args.no_progress, args.world)
    import pandas as pd

    print(format_behavior_table(pd.DataFrame(manifest["behavior_table"])))
    print(json.dumps(manifest["timings_s"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
