"""The layering of src/chromanet, checked from the source (docs/architecture.md).

- Every module belongs to exactly one layer; a module may import from its
  own layer and from the layers its layer is allowed to use (all below it),
  never from a higher one. Every import counts: module level, inside
  functions, and under ``if TYPE_CHECKING``.
- No import circles between modules at run time (imports under
  ``if TYPE_CHECKING`` are type-only and are not executed; they are left
  out of the circle check, not out of the layer check).
- No module uses another module's ``_private`` names: neither
  ``from chromanet.x import _name`` nor ``something._name`` where ``_name``
  is not defined in the module itself (a name a module defines, as a
  function, class, assignment target or attribute it sets, is its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chromanet"

# Layer -> the modules in it (a trailing ".*" takes a whole subpackage).
LAYERS: dict[str, list[str]] = {
    "foundation": [
        "chromanet._pdu", "chromanet._framer", "chromanet._pdata", "chromanet._dimse", "chromanet._dataset",
        "chromanet.errors", "chromanet.uids", "chromanet.dsutil", "chromanet.sop_class",
        "chromanet.status", "chromanet.loopthread", "chromanet.utils", "chromanet.logutil",
        "chromanet.tls_context",
    ],
    "archive": ["chromanet.archive.*"],
    "ul": ["chromanet.ul.*"],
    "dimse": ["chromanet.dimse_channel"],
    "services": ["chromanet.evt", "chromanet.presentation", "chromanet.services.*"],
    "api": [
        "chromanet.association", "chromanet.server", "chromanet.blocking", "chromanet.ae", "chromanet.pdu_primitives",
        "chromanet",
    ],
    "apps": ["chromanet.apps.*"],
}

# Layer -> the layers below it that it may use.
MAY_USE: dict[str, set[str]] = {
    "foundation": set(),
    "archive": {"foundation"},
    "ul": {"foundation"},
    "dimse": {"foundation", "ul"},
    "services": {"foundation", "ul", "dimse"},
    "api": {"foundation", "ul", "dimse", "services"},
    "apps": {"foundation", "archive", "ul", "dimse", "services", "api"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in SRC.rglob("*.py")}
    # The Cython modules, by their stubs.
    found.update({_module_name(p): p for p in SRC.glob("_*.pyi")})
    return found


MODULES = _modules()


def layer_of(module: str) -> str:
    for layer, members in LAYERS.items():
        for member in members:
            if member.endswith(".*"):
                if module == member[:-2] or module.startswith(member[:-1]):
                    return layer
            elif module == member:
                return layer
    raise LookupError(module)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    if not MODULES[module].name.startswith("__init__"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, bool, list[str]]]:
    """(imported chromanet module, type-only, names imported from it)."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, bool, list[str]]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chromanet"):
                    found.append((alias.name, type_only, []))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.startswith("chromanet"):
                names = [alias.name for alias in node.names]
                submodules = [n for n in names if f"{target}.{n}" in MODULES]
                for name in submodules:
                    found.append((f"{target}.{name}", type_only, []))
                others = [n for n in names if n not in submodules]
                if others or not submodules:
                    found.append((target, type_only, others))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_chromanet_import_names_a_module(module):
    missing = []
    for target, _type_only, _names in imports_of(module):
        if target not in MODULES:
            missing.append(target)
    assert not missing, f"{module} imports chromanet modules that do not exist: {missing}"


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert not unplaced, f"put these modules in a layer in LAYERS: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module):
    layer = layer_of(module)
    allowed = MAY_USE[layer] | {layer}
    wrong = [
        f"{target} ({layer_of(target)})"
        for target, _type_only, _names in imports_of(module)
        if target in MODULES and layer_of(target) not in allowed
    ]
    assert not wrong, f"{module} ({layer}) imports from a layer it may not use: {wrong}"


def test_no_import_circles():
    graph = {
        module: {target for target, type_only, _ in imports_of(module) if not type_only and target in MODULES}
        for module in MODULES
    }
    # A package's __init__ importing its own submodules is how packages
    # work, not a circle: leave parent -> child edges out.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    visiting: list[str] = []
    done: set[str] = set()
    circles: list[list[str]] = []

    def walk(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            circles.append(visiting[visiting.index(module):] + [module])
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            walk(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        walk(module)
    assert not circles, f"import circles: {circles}"


def _own_names(tree: ast.AST) -> set[str]:
    """Every name a module defines: functions, classes, arguments,
    assignment targets, attributes it sets, __slots__ entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            for element in ast.walk(node.value):
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    names.add(element.value)
    return names


def _private(name: str) -> bool:
    # _name, not __dunder__ and not _sunder_ (enum's protocol names).
    return name.startswith("_") and not name.endswith("_")


@pytest.mark.parametrize("module", sorted(m for m, p in MODULES.items() if p.suffix == ".py"))
def test_no_use_of_another_modules_private_names(module):
    tree = ast.parse(MODULES[module].read_text())
    own = _own_names(tree)
    wrong = []
    for target, _type_only, names in imports_of(module):
        wrong += [f"from {target} import {name}" for name in names if _private(name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _private(node.attr):
            if node.attr not in own:
                wrong.append(f"line {node.lineno}: .{node.attr}")
    assert not wrong, f"{module} uses private names of other modules: {wrong}"
