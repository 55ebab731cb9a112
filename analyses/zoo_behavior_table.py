"""The zoo's behavior table: every model × behavior on held-out test prompts, base without cue, base with the
behavior's cue, and base with its own donor adapter (no cue).

    python analyses/zoo_behavior_table.py --out figures/            # recompute, write CSV + Markdown
    python analyses/zoo_behavior_table.py --out figures/ --update-manifest   # also store it in the zoo manifest
    python analyses/zoo_behavior_table.py --out figures/ --world heldout     # the second world's zoo

Seeded and deterministic (greedy decoding); about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from commandv_interp import zoo
from commandv_interp.io import atomic_write, write_json
from commandv_interp.zoo.catalog import MANIFEST, world_dir
from commandv_interp.zoo.evaluate import format_behavior_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test prompts")
    parser.add_argument("--update-manifest", action="store_true", help="write the table into the zoo manifest")
    parser.add_argument("--world", choices=sorted(zoo.WORLDS), default="main")
    args = parser.parse_args()
    torch.manual_seed(0)
    world = args.world
    names = zoo.list_models(world=world)
    models = {name: zoo.load_model(name, world=world) for name in names}
    adapters = {(name, b): zoo.load_adapter(name, b, world=world) for name in names
                for b in zoo.WORLD_BEHAVIORS[world]}
    table = zoo.behavior_table(models, adapters, zoo.WORLD_BEHAVIORS[world], limit=args.limit, world=world)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "zoo_behavior_table" if world == "main" else f"zoo_behavior_table_{world}"
    atomic_write(args.out / f"{stem}.csv", lambda p: table.to_csv(p, index=False))
    markdown = format_behavior_table(table)
    atomic_write(args.out / f"{stem}.md", lambda p: p.write_text(markdown + "\n"))
    print(markdown)
    if args.update_manifest:
        manifest = zoo.manifest(world=world)
        manifest["behavior_table"] = table.to_dict(orient="records")
        write_json(world_dir(world) / MANIFEST, manifest)


if __name__ == "__main__":
    main()
