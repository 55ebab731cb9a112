"""Write docs/figures.md: one line per paper figure (what to see, its numbers read from the figure's CSV) with the
image linked and the command and study file that reproduce it. Run after the figure scripts:

    python analyses/figures_md.py [--figures docs/figures] [--out docs/figures.md]
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

import pandas as pd

import _figure

SCRIPTS = ["fig_alpha", "fig_profile_size", "fig_layer_map", "fig_similarity", "fig_method", "fig_attribution",
           "fig_fidelity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=Path, default=_figure.FIGURES)
    parser.add_argument("--out", type=Path, default=_figure.ROOT / "docs" / "figures.md")
    args = parser.parse_args()
    lines = ["# Figures", "",
             "Each figure comes from one command on the zoo (seeded; bootstrap 95% CIs over test prompts); its study "
             "file in `examples/` sets what it runs. Regenerate this page with `python analyses/figures_md.py`.", ""]
    for name in SCRIPTS:
        script = importlib.import_module(name)
        csv = args.figures / f"{script.STEM}.csv"
        if not csv.exists():
            lines += [f"- **{script.STEM}**: not generated yet (`python analyses/{name}.py`).", ""]
            continue
        image = Path(os.path.relpath(args.figures / f"{script.STEM}.png", args.out.parent))
        lines += [f"## {script.STEM.replace('_', ' ')}", "",
                  f"{script.caption(pd.read_csv(csv))}", "",
                  f"![{script.STEM}]({image.as_posix()})", "",
                  f"`python analyses/{name}.py` (study: `examples/{script.STUDY}.toml`)", ""]
    args.out.write_text("\n".join(lines))
    print(args.out)


if __name__ == "__main__":
    main()
