"""Storage at the paper's scale, from shapes: ``commandv_interp.pipeline.storage_table`` (checked against real saved
objects in ``tests/test_footprint.py``) for a Llama-3.1-8B donor (32 × 4096) → Llama-3.2-3B recipient (28 × 3072),
NodiReFT rank 8 on 16 donor layers, all layers profiled; the markdown table of ``docs/scale-out.md``.

    python benchmarks/storage.py [--prompts N]
"""

from __future__ import annotations

import argparse

from commandv_interp.pipeline.storage import storage_table

DONOR, RECIPIENT = (4096, 32), (3072, 28)  # (width, blocks)
ADAPTER_LAYERS, RANK = 16, 8


def markdown(n_prompts: int) -> str:
    table = storage_table(*DONOR, *RECIPIENT, n_prompts=n_prompts, adapter_layers=ADAPTER_LAYERS, rank=RANK)
    lines = ["| artifact | shape | numbers | MB |", "|---|---|---|---|"]
    lines += [f"| {r.artifact} | {r.shape} | {r.numbers:,} | {r.MB:,.1f} |" for r in table.itertuples()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000, help="profile prompts (default 1000)")
    print(markdown(parser.parse_args().prompts))


if __name__ == "__main__":
    main()
