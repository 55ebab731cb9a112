"""Data flows one way: a module imports only from its own stage or stages above it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "commandv_interp"

STAGE = {
    "types": 0, "io": 0,
    "access": 1,
    "prompts": 2, "profiles": 2,
    "similarity": 3, "correspondence": 3,
    "fitting": 4, "converters": 4,
    "adapters": 5, "paste": 5, "compile": 5, "calibration": 5, "footprint": 5,
    "zoo": 6,
    "analysis": 7,
    "plotting": 8,
    "cli": 9, "demo": 9,
}


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGE.get(parts[1]) if len(parts) > 1 and parts[0] == "commandv_interp" else None


def test_imports_flow_one_way():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _stage(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                stage = _stage(name)
                if stage is not None and stage > own:
                    offenders.append(f"{rel} (stage {own}) imports {name} (stage {stage})")
    assert not offenders, offenders


def test_import_has_no_side_effects():
    import subprocess
    import sys

    code = ("import sys, logging; before = set(sys.modules); import commandv_interp as cv; "
            "assert sys.excepthook is sys.__excepthook__; "
            "assert not logging.getLogger().handlers; print(len(cv.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) >= 10
