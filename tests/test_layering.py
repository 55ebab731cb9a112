"""Data flows one way: a module imports only from its own stage or the stages before it.

The stage map covers every module of the package: a new module must be placed in it, or this test fails.
Inside the package nothing imports the package root's re-exports (they hide which stage a name comes from);
``from commandv_interp import zoo`` names a subpackage and is checked as ``commandv_interp.zoo``.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "commandv_interp"

STAGE = {
    "version": 0, "types": 0, "io": 0, "validation": 0, "prompts": 0, "metrics": 0,
    "access": 1,
    "profiles": 2, "adapters": 2,
    "correspondence": 3,
    "converters": 4,
    "paste": 5,
    "pipeline": 6, "zoo": 6,
    "analysis": 7,
    "plotting": 8,
    "app": 9,
}
"""Top-level module or subpackage of ``commandv_interp`` → its stage."""

SUBPACKAGES = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _modules() -> list[tuple[Path, str]]:
    return [(path, ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
            for path in sorted(PACKAGE.rglob("*.py"))]


def _stage(module: str) -> int:
    top = module.split(".")[1]
    if top not in STAGE:
        raise KeyError(top)
    return STAGE[top]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` of every import of ``commandv_interp`` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return [item for item in out if item[1].split(".")[0] == "commandv_interp"]


def test_every_module_has_a_stage():
    unknown = []
    for _, module in _modules():
        parts = module.split(".")
        if len(parts) > 1 and parts[1] != "__init__" and parts[1] not in STAGE:
            unknown.append(module)
    assert not unknown, f"modules missing from the stage map: {unknown}"


def test_imports_flow_one_way():
    offenders = []
    for path, module in _modules():
        if module == "commandv_interp.__init__":
            continue
        own = _stage(module)
        for line, target, names in _imports(path):
            if target == "commandv_interp":
                subs = [n for n in names if n in SUBPACKAGES or (PACKAGE / f"{n}.py").exists()]
                if len(subs) != len(names) and not module.startswith("commandv_interp.app."):
                    offenders.append(f"{module}:{line} imports {sorted(set(names) - set(subs))} from the package "
                                     "root; import from the defining module")
                targets = [f"commandv_interp.{n}" for n in subs]
            elif target.split(".")[0] == "commandv_interp" and target.count(".") == 0:
                # ``import commandv_interp as cv``: the facade; only the app (the last stage) may use it
                targets = []
                if not module.startswith("commandv_interp.app."):
                    offenders.append(f"{module}:{line} imports the package root")
            else:
                targets = [target]
            for name in targets:
                if _stage(name) > own:
                    offenders.append(f"{module}:{line} (stage {own}) imports {name} (stage {_stage(name)})")
    assert not offenders, offenders


def test_the_layering_check_sees_root_and_upward_imports(tmp_path):
    """The checker itself: a planted upward import and a planted root import are both reported."""
    fake = tmp_path / "converters_fake.py"
    fake.write_text("from commandv_interp.paste import paste\nfrom commandv_interp import fit_converters\n")
    found = _imports(fake)
    assert [t for _, t, _ in found] == ["commandv_interp.paste", "commandv_interp"]
    assert _stage("commandv_interp.paste.paste") > _stage("commandv_interp.converters.fit")


def test_import_has_no_side_effects():
    """Importing the package (after its dependencies, which set warning filters of their own) changes no global hook
    or warning filter and sets up no logging; the lazily imported subpackages wait until asked for."""
    code = ("import sys, logging, warnings, numpy, torch, transformers, nnsight, transformer_lens, pandas; "
            "hook = sys.excepthook; filters = list(warnings.filters); "
            "import commandv_interp as cv; "
            "assert sys.excepthook is hook, 'excepthook changed'; "
            "assert warnings.filters == filters, 'warning filters changed'; "
            "assert not logging.getLogger().handlers, 'root logging configured'; "
            "lazy = [m for m in ('commandv_interp.analysis', 'commandv_interp.plotting', 'commandv_interp.zoo') "
            "if m in sys.modules]; assert not lazy, lazy; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
            "assert cv.zoo.__name__ == 'commandv_interp.zoo'; print(len(cv.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 10
