"""Device placement (issue 30): every tensor made inside a hook, an edit, a converter application or the polish's loss
is made on the hidden state's device, with an explicit dtype.

An AST check: in the code that runs inside a forward pass (:data:`EDIT_PATH`), every call of a torch tensor factory
(``torch.zeros``, ``torch.full``, ``torch.tensor``, ...) passes ``device=`` and ``dtype=`` (index factories such as
``torch.arange`` only ``device=``: their default integer dtype is the one an index needs). ``*_like`` and
``Tensor.new_*`` calls inherit both and are not factories here. A run under ``torch.device("meta")`` cannot stand
in: edits select positions by data (``hidden[mask]``), which meta tensors do not have, and a CPU tensor multiplied
with a meta one passes silently. ``tests/test_devices.py`` checks the placement of the pieces themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "commandv_interp"

FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "eye", "linspace", "logspace", "rand", "randn",
             "normal"}
INDEX_FACTORIES = {"arange", "randint", "randperm"}

WHOLE = None
EDIT_PATH: dict[str, tuple[str, ...] | None] = {
    "access/positions.py": WHOLE,  # the prompt-position masks edits select with
    "access/intrace.py": WHOLE,  # what a remote trace runs
    "access/blocks.py": WHOLE,
    "access/base.py": WHOLE,  # edits composed
    "access/recording.py": WHOLE,  # states recorded by an edit
    "access/nnsight_backend.py": WHOLE,  # the hooks and the generation loop
    "access/tl_backend.py": WHOLE,
    "access/prefix.py": ("prefix_states.stop",),  # the hook that stops a prefix pass (its inputs are built on the CPU)
    "adapters/edits.py": WHOLE,
    "adapters/lora.py": WHOLE,  # LoRA hooks on the projections
    "adapters/interventions.py": ("Intervention.delta", "Intervention.forward", "Intervention._source",
                                  "NodiReFT.delta", "NoReFT.delta", "DiReFT.delta", "LoReFT.delta",
                                  "_Rotated._rotate_and_source", "_Rotated.project"),
    "adapters/train.py": ("_train_edit.edit",),
    "converters/transport.py": WHOLE,
    "converters/artifact.py": ("LinearConverter.linear", "LinearConverter.__call__", "LinearConverter.pullback"),
    "paste/paste.py": WHOLE,
    "pipeline/agreement.py": ("at_prompt_end.make.edit",),
    "pipeline/polish.py": ("Distillation._loss",),
}
"""Module → the functions (qualified names, nested ones included) that run inside a forward pass; ``WHOLE``: all."""


def unplaced_factories(source: str, scope: tuple[str, ...] | None) -> tuple[list[str], set[str]]:
    """``(problems, functions found)``: each factory call without ``device=`` (or ``dtype=``) inside ``scope`` (the
    qualified names of functions; None: the whole source), as ``"line qualname torch.f(...) lacks device="``."""
    problems, found, stack = [], set(), []

    def inside() -> bool:
        name = ".".join(stack)
        return scope is None or any(name == s or name.startswith(s + ".") for s in scope)

    class Visitor(ast.NodeVisitor):
        def _scoped(self, node):
            stack.append(node.name)
            found.add(".".join(stack))
            self.generic_visit(node)
            stack.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

        def visit_Call(self, node):
            f = node.func
            is_torch = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch"
            if is_torch and f.attr in FACTORIES | INDEX_FACTORIES and inside():
                given = {k.arg for k in node.keywords}
                needed = {"device"} | ({"dtype"} if f.attr in FACTORIES else set())
                for kw in sorted(needed - given):
                    problems.append(f"{node.lineno} {'.'.join(stack)} torch.{f.attr}(...) lacks {kw}=")
            self.generic_visit(node)

    Visitor().visit(ast.parse(source))
    return problems, found


@pytest.mark.parametrize("module", sorted(EDIT_PATH))
def test_tensors_made_in_the_edit_path_are_placed(module):
    scope = EDIT_PATH[module]
    problems, found = unplaced_factories((PACKAGE / module).read_text(), scope)
    missing = [name for name in scope or () if name not in found]
    assert not missing, f"{module} no longer has {missing}: update EDIT_PATH"
    assert not problems, f"{module}: " + "; ".join(problems)


def test_the_check_finds_an_unplaced_factory():
    source = '''
def outer(rows):
    index = torch.tensor(rows)  # outside the edit: made once, moved in the edit
    def edit(hidden, ctx):
        mask = torch.zeros(hidden.shape[:2], dtype=torch.bool)
        pos = torch.arange(3)
        ok = torch.ones(2, device=hidden.device, dtype=hidden.dtype) + torch.zeros_like(hidden)
        return hidden
    return edit
'''
    problems, found = unplaced_factories(source, ("outer.edit",))
    assert found == {"outer", "outer.edit"}
    assert problems == ["5 outer.edit torch.zeros(...) lacks device=", "6 outer.edit torch.arange(...) lacks device="]
    assert len(unplaced_factories(source, None)[0]) == 4  # the whole source: index lacks both


def _installs_edits(tree: ast.AST) -> bool:
    """Whether a module defines an edit function (a ``ctx`` or ``EditContext`` argument) or registers a hook."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in node.args.args:
                if arg.arg == "ctx" or (isinstance(arg.annotation, ast.Name) and arg.annotation.id == "EditContext"):
                    return True
        if isinstance(node, ast.Attribute) and node.attr in ("register_forward_hook", "register_forward_pre_hook"):
            return True
    return False


def test_edit_path_covers_every_module_that_installs_edits():
    """A module that defines edit functions or registers forward hooks must be listed (or it escapes the check)."""
    unlisted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("app/", "zoo/")):  # the CLI and the zoo's training scripts
            continue
        if _installs_edits(ast.parse(path.read_text())) and rel not in EDIT_PATH:
            unlisted.append(rel)
    assert not unlisted, f"modules with hooks or edit functions not in EDIT_PATH: {unlisted}"
