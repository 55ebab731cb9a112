"""Data flows one way: a module imports only from its own stage or the stages before it; nothing outside ``app/``
imports the zoo; no two modules of one package import each other, directly or around a circle.

The stage map below is the one place stage numbers live: it covers every module of the package (a new module must
be placed in it, or this test fails), and module docstrings do not repeat it. Inside the package nothing imports the
package root's re-exports (they hide which stage a name comes from); ``from commandv_interp import zoo`` names a
subpackage and is checked as ``commandv_interp.zoo``. Imports inside functions count: a lazy import is still a
dependency.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "commandv_interp"

STAGE = {
    "version": 0, "types": 0, "io": 0, "manifest": 0, "validation": 0, "prompts": 0, "metrics": 0,
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

ZOO_USERS = ("commandv_interp.app.", "commandv_interp.zoo.")
"""Only the app (and the zoo itself) may import the zoo: the library runs on any model, the zoo is a fixture."""

STAGE_LABEL = re.compile(r'^\s*(?:[rRuU]?"""|\'\'\')\s*Stage \d+\b')
def _modules(root: Path = PACKAGE) -> list[tuple[Path, str]]:
    return [(path, ".".join(path.relative_to(root.parent).with_suffix("").parts))
            for path in sorted(root.rglob("*.py"))]


def _stage(module: str) -> int:
    top = module.split(".")[1]
    if top not in STAGE:
        raise KeyError(top)
    return STAGE[top]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, imported names)`` of every import of ``commandv_interp`` in a file (at any depth)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return [item for item in out if item[1].split(".")[0] == "commandv_interp"]


def _is_module(name: str, root: Path) -> bool:
    """Whether ``commandv_interp.a.b`` is a module or a package under ``root`` (the package folder)."""
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _targets(target: str, names: list[str], root: Path) -> list[str]:
    """The modules an import statement loads: ``from pkg import sub`` names the submodule ``pkg.sub``."""
    subs = [f"{target}.{n}" for n in names if _is_module(f"{target}.{n}", root)]
    return subs + ([target] if len(subs) < len(names) or not names else [])


def _offenders(files: list[tuple[Path, str]], root: Path = PACKAGE) -> list[str]:
    """Every import against the one-way flow among ``files`` (``(path, module)`` pairs): upward, from the package
    root outside the app, or of the zoo outside the app."""
    offenders = []
    for path, module in files:
        if module == "commandv_interp.__init__":
            continue
        own, in_app = _stage(module), module.startswith("commandv_interp.app.")
        for line, target, names in _imports(path):
            if target == "commandv_interp":
                loaded = [t for t in _targets(target, names, root) if t != target]
                if len(loaded) != len(names) and not in_app:
                    offenders.append(f"{module}:{line} imports {names} from the package root; import from the "
                                     "defining module")
            elif target.count(".") == 0:  # ``import commandv_interp as cv``: the facade, for the app only
                loaded = []
                if not in_app:
                    offenders.append(f"{module}:{line} imports the package root")
            else:
                loaded = [target]
            for name in loaded:
                if _stage(name) > own:
                    offenders.append(f"{module}:{line} (stage {own}) imports {name} (stage {_stage(name)})")
                if name.split(".")[1] == "zoo" and not module.startswith(ZOO_USERS):
                    offenders.append(f"{module}:{line} imports {name}: only app/ may use the zoo")
    return offenders


def _cycles(files: list[tuple[Path, str]], root: Path = PACKAGE) -> list[list[str]]:
    """Circles of imports among the modules of one package (a package's ``__init__`` counts as one of its modules)."""
    packages = {module.removesuffix(".__init__") for _, module in files if module.endswith(".__init__")}
    nodes = {module: module.removesuffix(".__init__") for _, module in files}

    def package(node: str) -> str:
        return node if node in packages else node.rsplit(".", 1)[0]

    graph: dict[str, set[str]] = {node: set() for node in nodes.values()}
    for path, module in files:
        here = nodes[module]
        for _, target, names in _imports(path):
            graph[here] |= {name for name in _targets(target, names, root)
                            if name in graph and name != here and package(name) == package(here)}
    return [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_stage():
    unknown = []
    for _, module in _modules():
        parts = module.split(".")
        if len(parts) > 1 and parts[1] != "__init__" and parts[1] not in STAGE:
            unknown.append(module)
    assert not unknown, f"modules missing from the stage map: {unknown}"


def test_imports_flow_one_way():
    offenders = _offenders(_modules())
    assert not offenders, offenders


def test_no_import_circles_inside_a_package():
    circles = _cycles(_modules())
    assert not circles, circles


def test_stage_numbers_live_in_this_table_only():
    labelled = [str(path.relative_to(PACKAGE)) for path, _ in _modules() if STAGE_LABEL.match(path.read_text())]
    assert not labelled, labelled


def _plant(root: Path, files: dict[str, str]) -> list[tuple[Path, str]]:
    """A fake ``commandv_interp`` under ``root`` holding ``files`` (path → source) and the packages around them."""
    package = root / "commandv_interp"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == package.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(source)
    return _modules(package)


def test_the_checks_catch_planted_offenders(tmp_path):
    """The loops above, run on planted files: an upward import, a root import, a zoo import outside the app (also a
    lazy one inside a function, and one through ``from commandv_interp import zoo``) are each reported; the app's
    zoo import and a same-stage import are not."""
    files = _plant(tmp_path, {
        "converters/fake.py": "from commandv_interp.paste import paste\nfrom commandv_interp import fit_converters\n",
        "pipeline/uses_zoo.py": "def f():\n    from commandv_interp.zoo.catalog import load_model\n",
        "analysis/uses_zoo.py": "from commandv_interp import zoo\n",
        "app/fine.py": "from commandv_interp.zoo import load_model\nfrom commandv_interp.pipeline import transfer\n",
        "zoo/catalog.py": "from commandv_interp.pipeline import transfer\n",
        "pipeline/__init__.py": "", "paste/__init__.py": "",
    })
    found = _offenders(files, tmp_path / "commandv_interp")
    assert found == [
        "commandv_interp.analysis.uses_zoo:1 imports commandv_interp.zoo: only app/ may use the zoo",
        "commandv_interp.converters.fake:1 (stage 4) imports commandv_interp.paste (stage 5)",
        "commandv_interp.converters.fake:2 imports ['fit_converters'] from the package root; import from the "
        "defining module",
        "commandv_interp.pipeline.uses_zoo:2 imports commandv_interp.zoo.catalog: only app/ may use the zoo",
    ], found


def test_the_checks_catch_a_planted_circle(tmp_path):
    """Two modules of one package importing each other (one lazily), and a longer circle through a package's
    ``__init__``, are found; imports across packages and a one-way chain are not circles."""
    files = _plant(tmp_path, {
        "access/base.py": "def generate():\n    from commandv_interp.access.limits import check\n",
        "access/limits.py": "from commandv_interp.access.base import Batch\n",
        "app/__init__.py": "",
        "app/cli.py": "from commandv_interp.app import cli_transfer\n",
        "app/cli_transfer.py": "from commandv_interp.app.helpers import app\n",
        "app/helpers.py": "from commandv_interp.app import cli\n",
        "paste/one.py": "from commandv_interp.paste.two import x\nfrom commandv_interp.access.base import y\n",
        "paste/two.py": "from commandv_interp.access import limits\n",
    })
    found = _cycles(files, tmp_path / "commandv_interp")
    assert found == [["commandv_interp.access.base", "commandv_interp.access.limits"],
                     ["commandv_interp.app.cli", "commandv_interp.app.cli_transfer", "commandv_interp.app.helpers"]]


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
