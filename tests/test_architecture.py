"""The package's shape: no import cycle inside ``chattune`` and no module over the size limit.

An edge is every ``import``/``from ... import`` of a ``chattune`` module anywhere in a file: at module
level AND inside functions (a lazy import only moves a cycle to run time, it does not remove it). The
implicit import of a parent package (``import chattune.a.b`` runs ``chattune/a/__init__.py``) is not an
edge: it would make every package that re-exports a name look cyclic.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "chattune"
MAX_LINES = 400


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """module name → the chattune modules it imports (see the module docstring for what counts)."""
    mods = _modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the module pkg.sub when there is one
                found |= {f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    """The check below can fail: a two-module cycle and a longer one are both reported."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "chattune.rundir.layout" in graph["chattune.rundir.read"]  # relative imports resolve
    assert "chattune.model.load" in graph["chattune.rundir.load"]  # function-level imports count


def test_no_import_cycle_inside_chattune():
    assert cycles(import_graph()) == []


def test_no_module_over_the_size_limit():
    long = {name: n for name, (path, _) in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long} (split them along what they own)"


def test_no_private_name_imported_across_packages():
    """``from chattune.a.b import _x`` only inside package ``chattune.a`` (a private name is that package's own)."""
    mods = _modules()
    crossing = []
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("chattune"):
                continue
            owner = mod if mod in mods and mods[mod][1] else mod.rsplit(".", 1)[0]
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__") and owner != pkg:
                    crossing.append(f"{name}: from {mod} import {a.name}")
    assert crossing == []


def chattune_attribute_writes(tree: ast.AST) -> list[int]:
    """Lines that set an attribute named ``chattune_*`` on an object (``x.chattune_y = ...``, ``+=``, annotated,
    or ``setattr(x, "chattune_y", ...)``): results travel as typed values, not stuck on Hugging Face objects."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("chattune_")):
            lines.append(node.lineno)
        flat = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
        lines += [t.lineno for t in flat if isinstance(t, ast.Attribute) and t.attr.startswith("chattune_")]
    return sorted(lines)


def test_chattune_attribute_writes_are_found():
    src = "m.chattune_load = {}\na, b.chattune_x = 1, 2\nsetattr(m, 'chattune_y', 3)\nm.other = 4\nchattune_z = 5\n"
    assert chattune_attribute_writes(ast.parse(src)) == [1, 2, 3]


def test_no_chattune_attributes_set_on_objects():
    found = [f"{path.relative_to(SRC.parent)}:{line}" for path, _ in _modules().values()
             for line in chattune_attribute_writes(ast.parse(path.read_text(encoding="utf-8")))]
    assert found == [], f"chattune_* attributes set on objects (return a typed result instead): {found}"
