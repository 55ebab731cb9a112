"""The zoo's behavior table: every model × behavior on held-out test prompts, base without cue, base with the
behavior's cue, and base with its own donor adapter (no cue).

    python analyses/zoo_behavior_table.py --out figures/            # recompute, write CSV + Markdown
    python analyses/zoo_behavior_table.py --out figures/ --update-manifest   # also store it in the zoo manifest

Seeded and deterministic (greedy decoding); about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from commandv_interp import zoo
from commandv_interp.io import atomic_write, write_json
from commandv_interp.zoo.catalog import DATA, MANIFEST
from commandv_interp.zoo.evaluate import format_behavior_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test prompts")
    parser.add_argument("--update-manifest", action="store_true", help="write the table into the zoo manifest")
    args = parser.parse_args()
    torch.manual_seed(0)
    names = zoo.list_models()
    models = {name: zoo.load_model(name) for name in names}
    adapters = {(name, b): zoo.load_adapter(name, b) for name in names for b in zoo.BEHAVIORS}
    table = zoo.behavior_table(models, adapters, limit=args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "zoo_behavior_table.csv", lambda p: table.to_csv(p, index=False))
    markdown = format_behavior_table(table)
    atomic_write(args.out / "zoo_behavior_table.md", lambda p: p.write_text(markdown + "\n"))
    print(markdown)
    if args.update_manifest:
        manifest = zoo.manifest()
        manifest["behavior_table"] = table.to_dict(orient="records")
        write_json(DATA / MANIFEST, manifest)


if __name__ == "__main__":
    main()
