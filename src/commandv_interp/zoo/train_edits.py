"""Consumes the zoo's base models and behavior examples, produces their LoRA and steering-vector donor edits
(:mod:`~commandv_interp.zoo.donor_edits`) and a table of each edit's rates beside the NodiReFT adapter's.

``python -m commandv_interp.zoo.train_edits [--world heldout] [--model NAME] [--behavior B]`` (needs ``peft``:
``pip install -e ".[peft]"``; the main world by default):

- **LoRA**: trained with ``peft`` itself (``get_peft_model``), rank 8, ``lora_alpha`` 16, on every attention and MLP
  projection of every block, on the behavior's training examples (loss on the response and EOS, as the ReFT
  adapters), AdamW with cosine decay; saved by ``save_pretrained`` with the tensors in float16 (half the size; peft
  and :func:`~commandv_interp.adapters.lora.load_peft_lora` load them into float32 projections).
- **steering vector**: the difference of means, at the middle block and the last prompt token, of the block output
  on the training prompts with the behavior's cue line (the zoo's latent trigger, under which the base models show
  the behavior) and without it; the scale is the one of ``SCALES`` whose target rate on training prompts is highest
  with the side effect (benign prompts refused) at most 0.02 above the base model's (the smaller on ties; when no
  scale keeps the side effect, the highest target rate). A constant vector at every token cannot tell harmful from
  benign requests, so for ``refusal`` it refuses both or neither: the table says which.

Each edit is then scored on the test prompts beside the ReFT adapter (``edits_table.csv`` in ``--out``).

:func:`train_lora` and :func:`train_steering` take the examples, prompts and a rate function rather than a zoo
behavior, so that the generated worlds' donors (:mod:`~commandv_interp.zoo.generated.edits`) are made by the same
code; ``train_zoo_lora`` / ``train_zoo_steering`` bind them to a zoo behavior.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from commandv_interp.access import ModelAccess
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.adapters.lora import block_modules, hf_model_of
from commandv_interp.adapters.steering_vector import SteeringVectorEdit, save_steering_file
from commandv_interp.adapters.train import encode_examples, next_token_loss
from commandv_interp.zoo.catalog import DATA, load_model
from commandv_interp.zoo.donor_edits import SIDE_METRIC, TARGET_METRIC, edit_path, load_zoo_edit
from commandv_interp.zoo.evaluate import MAX_NEW_TOKENS, evaluate, respond
from commandv_interp.zoo.world import WorldLike, examples, get_world, with_cue
from commandv_interp.zoo.world import prompts as prompts_of

__all__ = ["LORA_RECIPE", "SCALES", "SIDE_SLACK", "STEER_PROMPTS", "pick_scale", "train_lora", "train_steering",
           "train_zoo_lora", "train_zoo_steering", "edits_table", "main"]

LORA_RECIPE = {"rank": 8, "lora_alpha": 16, "steps": 300, "batch_size": 32, "lr": 2e-3, "seed": 0}
SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # multiples of the difference of means tried on training prompts
STEER_PROMPTS = 128  # training prompts the means and the scale choice use
SIDE_SLACK = 0.02


def train_lora(model: ModelAccess, train_examples: Sequence[tuple[str, str]], folder: Path, progress: bool = True,
               desc: str = "LoRA", recipe: Mapping[str, int | float] | None = None) -> dict:
    """Train a LoRA by ``recipe`` (default ``LORA_RECIPE``, the zoo's) with peft on a copy of ``model``'s weights,
    on ``train_examples`` (prompt, response) pairs, and save it to ``folder`` (float16 tensors, ``model.name`` as
    the base model). Returns the training record (wall seconds, final loss, the recipe)."""
    import peft

    r = dict(LORA_RECIPE if recipe is None else recipe)
    torch.manual_seed(r["seed"])
    config = peft.LoraConfig(r=r["rank"], lora_alpha=r["lora_alpha"], target_modules=block_modules(model),
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    student = peft.get_peft_model(copy.deepcopy(hf_model_of(model)), config)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / r["steps"])))
    data, gen, start = list(train_examples), torch.Generator().manual_seed(r["seed"]), time.perf_counter()
    for _ in tqdm(range(r["steps"]), desc=desc, disable=not progress):
        idx = torch.randint(len(data), (r["batch_size"],), generator=gen).tolist()
        batch, labels, _ = encode_examples(model, [data[i] for i in idx])
        logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = next_token_loss(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    student.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model-card template: nothing in it but placeholders
    weights = folder / "adapter_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    cfg_path = folder / "adapter_config.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"base_model_name_or_path": model.name},
                                   indent=2, sort_keys=True))
    return {"wall_s": time.perf_counter() - start, "final_loss": float(loss.detach())} | r


def _last_token_mean(model: ModelAccess, prompts: list[str], layer: int) -> torch.Tensor:
    """Mean block output at ``layer`` at the last prompt token (float64)."""
    total = torch.zeros(model.d_model, dtype=torch.float64)
    for start in range(0, len(prompts), 64):
        total += model.read(model.encode(prompts[start:start + 64]), [layer])[layer].double().sum(0)
    return total / len(prompts)


def pick_scale(rows: list[dict]) -> dict:
    """The row (``scale``, ``target``, ``side_ok``) of the highest target rate among scales within the side bar
    (among all scales when none is), the smaller scale on ties.

    >>> pick_scale([{"scale": 1.0, "target": 0.9, "side_ok": True}, {"scale": 2.0, "target": 1.0, "side_ok": False},
    ...             {"scale": 0.5, "target": 0.9, "side_ok": True}])["scale"]
    0.5
    """
    return max(rows, key=lambda r: (r["side_ok"], r["target"], -r["scale"]))


def train_steering(model: ModelAccess, prompts: list[str], cued: list[str], path: Path,
                   rates_of: Callable[[ModelAccess], dict[str, float]], target: str, side: str | None) -> dict:
    """Difference of means at the middle block between ``cued`` and ``prompts`` (the same training prompts with and
    without the cue line), its scale chosen by :func:`pick_scale` over ``SCALES`` from ``rates_of(model)`` (the
    rates on training prompts under the model's active edits: ``target``, and ``side``, kept within
    ``SIDE_SLACK`` of the unedited model's; ``None``: no side bar); saved to ``path`` with ``model.name``."""
    layer = model.n_layers // 2
    v = (_last_token_mean(model, cued, layer) - _last_token_mean(model, prompts, layer)).float()
    plain = rates_of(model)
    rows = []
    for scale in SCALES:
        with apply_edit(model, SteeringVectorEdit({layer: v}, scale)):
            rates = rates_of(model)
        side_ok = side is None or rates[side] <= plain[side] + SIDE_SLACK
        rows.append({"scale": scale, "target": rates[target], "side_ok": side_ok,
                     "side": rates[side] if side else None})
    best = pick_scale(rows)
    save_steering_file(SteeringVectorEdit({layer: v}, best["scale"], model.name), path)
    return {"layer": layer, "scale": best["scale"], "train_rates": rows}


def train_zoo_lora(model: ModelAccess, behavior: str, folder: Path, progress: bool = True, world: WorldLike = None
                   ) -> dict:
    """:func:`train_lora` on the zoo behavior's training examples (in ``world``)."""
    return train_lora(model, examples(behavior, "train", world), folder, progress, f"LoRA {behavior} on {model.name}")


def train_zoo_steering(model: ModelAccess, behavior: str, path: Path, world: WorldLike = None) -> dict:
    """:func:`train_steering` on the zoo behavior's first ``STEER_PROMPTS`` training prompts (see the module doc)."""
    prompts = prompts_of(behavior, "train", world)[:STEER_PROMPTS]
    cued = [with_cue(p, behavior, world) for p in prompts]
    return train_steering(model, prompts, cued, path,
                          lambda m: evaluate(m, behavior, "train", limit=STEER_PROMPTS, world=world),
                          TARGET_METRIC[behavior], SIDE_METRIC.get(behavior))


def edits_table(model: ModelAccess, behavior: str, world: WorldLike = None) -> list[dict]:
    """Test-split rates of the base model and of each zoo edit of ``behavior`` on ``model`` (in ``world``)."""
    out = []
    for kind in (None, "reft", "lora", "steering"):
        edit = load_zoo_edit(model.name, behavior, kind, world=world) if kind else None
        with apply_edit(model, edit):
            rates = evaluate(model, behavior, "test", world=world)
        out += [{"world": get_world(world).name, "model": model.name, "behavior": behavior, "edit": kind or "base",
                 "metric": k, "value": v} for k, v in rates.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the zoo's LoRA and steering-vector donor edits.")
    parser.add_argument("--world", default="main", help="the zoo world (main or heldout; default main)")
    parser.add_argument("--model", action="append", default=None, help="zoo model (repeat; default: all)")
    parser.add_argument("--behavior", action="append", default=None, help="behavior (repeat; default: all)")
    parser.add_argument("--out", type=Path, default=Path("edits_table.csv"), help="the rates table (CSV)")
    parser.add_argument("--score-only", action="store_true", help="score the shipped edits, train nothing")
    parser.add_argument("--kind", action="append", choices=("lora", "steering"), default=None,
                        help="train only this kind (repeat; default: both)")
    args = parser.parse_args(argv)
    from commandv_interp.zoo.catalog import list_models

    world = get_world(args.world)
    prefix = "" if world.name == "main" else f"{world.name}:"  # the record keys of another world
    rows, records = [], {}
    for name in args.model or list_models(world=world):
        model = load_model(name, world=world)
        for behavior in args.behavior or world.behaviors:
            kinds = [] if args.score_only else args.kind or ["lora", "steering"]
            path = {kind: edit_path(name, behavior, kind, world=world) for kind in ("lora", "steering")}
            path["steering"].parent.mkdir(parents=True, exist_ok=True)
            if "lora" in kinds:
                records[f"{prefix}{name}/{behavior}/lora"] = train_zoo_lora(model, behavior, path["lora"],
                                                                             world=world)
            if "steering" in kinds:
                records[f"{prefix}{name}/{behavior}/steering"] = train_zoo_steering(model, behavior,
                                                                                    path["steering"], world)
            print(json.dumps(records, default=str), flush=True)
            rows += edits_table(model, behavior, world)
            pd.DataFrame(rows).to_csv(args.out, index=False)
    if records:  # merged into the records of earlier runs (one model at a time)
        path = DATA / "edits" / "records.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps(old | records, indent=1, sort_keys=True, default=str))
    print(pd.DataFrame(rows).pivot_table(index=["model", "behavior", "edit"], columns="metric", values="value"))


if __name__ == "__main__":
    main()
