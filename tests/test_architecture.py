"""The package structure of ``prunekit``, read from the source (``ast``; nothing is imported).

Every ``import`` of a prunekit module counts: at module top, inside functions and under ``TYPE_CHECKING``.
``import prunekit.a.b`` and ``from prunekit.a import b`` (``b`` a module) are arrows to ``prunekit.a.b``;
``from prunekit.a import name`` is an arrow to ``prunekit.a``. The parent packages Python runs on the way
are not counted: they are not what the line asks for.

Checked: (a) no import cycle between modules; (b) no arrow running up the layers below; (c) a private name
(``_x``, a module or anything in one) is imported only from inside the package that owns it: a private
module ``prunekit.p._m`` by the modules of ``prunekit.p``, a private name of a module of a subpackage by the
modules of that subpackage, and a private name of a top-level module (``prunekit.graph._x``) by nobody;
(d) a name is imported from the module that defines it, not from a plain module that only imported it
(package ``__init__`` files are the one place that re-exports).

Layers, lowest first. A module may import modules of its own layer and of the layers below it, never one
above; a module belongs to the layer of the longest name in :data:`LAYERS` that it starts with.

0. foundation: ``errors``, ``_registry``, ``_device`` (and ``validate``, the option checks, when it exists)
1. primitives: ``graph`` (channel groups), ``heads`` (attention heads as structures), ``gates`` (relaxations), ``metrics`` (mask statistics, used by the
   DPP gate), ``models`` (the zoo), ``data`` (datasets)
2. building blocks: ``augment`` (gating a model), ``cost``, ``io``, ``bn``, ``latency``, ``latency_table`` (the
   per-layer latency table), ``inference`` (BN folding, channels_last), ``quant``, ``optim``, ``_slim_modules``
3. ``collapse``
4. ``methods``
5. ``train`` (loop, experiment, run store, runner, sweeps)
6. analyses: ``compare``, ``curve``, ``sensitivity``
7. the facade: ``prunekit/__init__.py`` (``import prunekit as pk``)
8. ``viz`` (figures)
9. front ends: ``widgets``, ``app_support``, ``bench``
10. ``cli``
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "prunekit"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    ("prunekit.errors", "prunekit._registry", "prunekit._device", "prunekit.validate"),
    ("prunekit.graph", "prunekit.heads", "prunekit.gates", "prunekit.metrics", "prunekit.models", "prunekit.data"),
    ("prunekit.augment", "prunekit.cost", "prunekit.io", "prunekit.bn", "prunekit.latency", "prunekit.latency_table",
     "prunekit.inference", "prunekit.quant", "prunekit.optim", "prunekit._slim_modules"),
    ("prunekit.collapse",),
    ("prunekit.methods",),
    ("prunekit.train",),
    ("prunekit.compare", "prunekit.curve", "prunekit.sensitivity"),
    ("prunekit",),  # the package's own __init__ only (every other module matches a longer name)
    ("prunekit.viz",),
    ("prunekit.widgets", "prunekit._widgets_controls", "prunekit.app_support", "prunekit.bench"),
    ("prunekit.cli",),
)


@dataclass(frozen=True)
class Import:
    importer: str  # module that imports
    target: str  # module imported (a package means its __init__)
    name: str | None  # the name taken from ``target`` by ``from target import name``; None: the module itself
    line: int

    def __str__(self) -> str:
        what = self.target if self.name is None else f"{self.target}.{self.name}"
        return f"{self.importer} imports {what} (line {self.line})"


def find_modules(source: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every ``.py`` file under ``source``."""
    out = {}
    for path in sorted(source.rglob("*.py")):
        parts = [package, *path.relative_to(source).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str:
    """The longest known module ``name`` starts with (``prunekit.a.b.missing`` -> ``prunekit.a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def find_imports(modules: dict[str, tuple[Path, bool]], package: str = PACKAGE) -> list[Import]:
    """Every import of a module of ``package`` by a module of ``package``, wherever it stands in the file."""
    found = []
    for module, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        found.append(Import(module, _known(alias.name, modules), None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                if base != package and not base.startswith(package + "."):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        found.append(Import(module, sub, None, node.lineno))
                    else:
                        found.append(Import(module, _known(base, modules), alias.name, node.lineno))
    return found


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int | None:
    """Index of the layer whose longest matching name ``module`` is or starts with; None when none matches."""
    best, best_len = None, -1
    for i, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                if name == PACKAGE and module != PACKAGE:
                    continue  # the facade layer holds prunekit/__init__.py alone
                best, best_len = i, len(name)
    return best


def upward_imports(imports: list[Import], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    out = []
    for imp in imports:
        a, b = layer_of(imp.importer, layers), layer_of(imp.target, layers)
        if a is not None and b is not None and b > a:
            out.append(f"{imp} : layer {a} -> {b}")
    return out


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_imports(imports: list[Import], modules: dict[str, tuple[Path, bool]],
                    package: str = PACKAGE) -> list[str]:
    """Imports of a private module or name from outside the package that owns it."""
    out = []
    for imp in imports:
        parts = imp.target.split(".")
        first = next((i for i, p in enumerate(parts) if _private(p)), None)
        if first is not None and not _inside(imp.importer, ".".join(parts[:first])):
            out.append(f"{imp} : private module {imp.target}")
            continue
        if imp.name is not None and _private(imp.name):
            owner = imp.target if modules[imp.target][1] else imp.target.rsplit(".", 1)[0]
            if owner == package or not _inside(imp.importer, owner):
                out.append(f"{imp} : private name {imp.name}")
    return out


def _bound_at_top(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it only imports) at its top level (``if``/``try`` blocks included)."""
    defined, imported = set(), set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + [
                s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return defined, imported - defined


def second_hand_imports(imports: list[Import], modules: dict[str, tuple[Path, bool]]) -> list[str]:
    """Names taken from a plain module that did not define them but imported them itself."""
    bound = {}
    out = []
    for imp in imports:
        if imp.name is None or imp.name == "*" or modules[imp.target][1]:
            continue
        if imp.target not in bound:
            bound[imp.target] = _bound_at_top(ast.parse(modules[imp.target][0].read_text()))
        if imp.name in bound[imp.target][1]:
            out.append(f"{imp} : {imp.name} is only imported there")
    return out


@pytest.fixture(scope="module")
def modules() -> dict[str, tuple[Path, bool]]:
    return find_modules(SOURCE)


@pytest.fixture(scope="module")
def imports(modules) -> list[Import]:
    return find_imports(modules)


def test_the_walk_sees_the_package(modules, imports):
    assert {"prunekit", "prunekit.viz", "prunekit.train.store", "prunekit.bench.pareto", "prunekit.optim"} <= set(modules)
    assert len(imports) > 300


def test_every_module_has_a_layer(modules):
    assert [m for m in modules if layer_of(m) is None] == []


def test_no_import_cycles(imports):
    cycle = find_cycle(import_graph(imports))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_imports(imports):
    assert upward_imports(imports) == []


def test_private_names_stay_in_their_package(imports, modules):
    assert private_imports(imports, modules) == []


def test_names_come_from_where_they_are_defined(imports, modules):
    assert second_hand_imports(imports, modules) == []


# -- the checks can fail: planted cases ----------------------------------------------------------------------
def test_cycle_detector_on_planted_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x2"}, "x2": {"x"}}) == ["x", "x2", "x"]


def _planted(tmp_path: Path, files: dict[str, str]) -> tuple[dict[str, tuple[Path, bool]], list[Import]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    mods = find_modules(tmp_path / "pkg", "pkg")
    return mods, find_imports(mods, "pkg")


def test_checks_catch_planted_violations(tmp_path):
    mods, imps = _planted(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g  # a function-local import counts\n",
        "high.py": "from pkg.low import f\nfrom pkg.low import _secret\n",
        "sub/__init__.py": "from . import _impl\n",
        "sub/_impl.py": "from .. import low\n",
        "sub/user.py": "from pkg.sub._impl import x\nfrom pkg.high import f\n",
    })
    assert find_cycle(import_graph(imps)) == ["pkg.high", "pkg.low", "pkg.high"]
    layers = (("pkg.low",), ("pkg.high", "pkg.sub"))
    assert upward_imports(imps, layers) == ["pkg.low imports pkg.high.g (line 2) : layer 0 -> 1"]
    assert private_imports(imps, mods, "pkg") == [
        "pkg.high imports pkg.low._secret (line 2) : private name _secret"]
    assert Import("pkg.sub._impl", "pkg.low", None, 1) in imps  # a relative import resolves
    assert second_hand_imports(imps, mods) == ["pkg.sub.user imports pkg.high.f (line 2) : f is only imported there"]
    outsider = Import("pkg.high", "pkg.sub._impl", None, 3)
    assert private_imports([outsider], mods, "pkg") == ["pkg.high imports pkg.sub._impl (line 3) : private module pkg.sub._impl"]
