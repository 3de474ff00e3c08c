"""Model, dataset and method names, known without importing torch, so that a typo is answered at once.

The registries live in modules that import torch (``prunekit.models``, ``prunekit.data``, ``prunekit.methods``),
which takes seconds. Their built-in names are read here from the package's source with ``ast`` (nothing is
imported): a model or a dataset is the first argument of a ``@register_model("name")`` /
``@register_dataset("name")`` decorator, a method the ``name`` of a class decorated with ``@register_method``
or passed to ``register_method(...)``. ``tests/test_cli.py`` checks that these are exactly the registries'
names. Once a registry is imported (e.g. a plugin registered a method in this process), its names count too.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

from prunekit._registry import Registry
from prunekit.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]
# kind -> (subpackage holding the registering files, the registering function)
_SOURCES = {"model": ("models", "register_model"), "dataset": ("data", "register_dataset"),
            "method": ("methods", "register_method")}
# forms a name may take that the registry resolves itself, checked when the object is built
_PREFIXED = {"model": (("tv:", "tv:NAME"), ("timm:", "timm:NAME")), "dataset": (("imagefolder:", "imagefolder:PATH"),)}


def _callee(node: ast.expr) -> str | None:
    """``f`` for ``f``, ``m.f``, ``f(...)`` and ``m.f(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _first_string(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def _class_name_attr(cls: ast.ClassDef) -> str | None:
    """The string assigned to ``name`` in a class body (``name = "crisp"`` or ``name: str = "dense"``)."""
    for stmt in cls.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "name" for t in targets) and isinstance(value, ast.Constant):
            return value.value if isinstance(value.value, str) else None
    return None


def _names_in(tree: ast.Module, register: str, by_class_name: bool) -> set[str]:
    """Names registered at the top level of a module (registration inside a function is not seen)."""
    found: set[str] = set()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for deco in node.decorator_list:
                if _callee(deco) != register:
                    continue
                if by_class_name and isinstance(node, ast.ClassDef):
                    name = _first_string(deco) or _class_name_attr(node)
                else:
                    name = _first_string(deco) or node.name
                if name:
                    found.add(name)
        elif by_class_name and isinstance(node, ast.Expr) and _callee(node.value) == register:
            args = getattr(node.value, "args", None) or [None]
            # register_method(Method): the base class registers the dense baseline
            if isinstance(args[0], ast.Name) and args[0].id in classes:
                name = _class_name_attr(classes[args[0].id])
                if name:
                    found.add(name)
    return found


@functools.cache
def source_names(kind: str) -> tuple[str, ...]:
    """The names the package's own files register for ``kind`` (``"model"``, ``"dataset"`` or ``"method"``)."""
    if kind not in _SOURCES:
        raise ConfigError(f"kind must be one of {', '.join(_SOURCES)}, got {kind!r}")
    folder, register = _SOURCES[kind]
    found: set[str] = set()
    for path in sorted((_PACKAGE / folder).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if register in text:  # parse only the files that can register (parsing is most of the cost)
            found |= _names_in(ast.parse(text, str(path)), register, kind == "method")
    return tuple(sorted(found))


def _registered(kind: str) -> list[str]:
    """The names of the registry of ``kind`` when its module is already imported, else none."""
    if kind == "model" and "prunekit.models" in sys.modules:
        return sys.modules["prunekit.models"].list_models(include_torchvision=False)
    if kind == "dataset" and "prunekit.data" in sys.modules:
        return sys.modules["prunekit.data"].list_datasets()
    if kind == "method" and "prunekit.methods" in sys.modules:
        return sys.modules["prunekit.methods"].list_methods()
    return []


def known_names(kind: str) -> list[str]:
    """What ``list_models(include_torchvision=False)`` / ``list_datasets()`` / ``list_methods()`` return, without
    importing them: the built-in names plus any registered in this process, with the prefixed forms
    (``tv:NAME``, ``timm:NAME``, ``imagefolder:PATH``)."""
    names = set(source_names(kind)) | set(_registered(kind))
    for prefix, form in _PREFIXED.get(kind, ()):
        names = {n for n in names if n != prefix.rstrip(":")} | {form}
    return sorted(names)


def check_name(kind: str, name: str | None) -> None:
    """Raise the registry's own ConfigError (``unknown model 'x'; did you mean ...``) for an unknown ``name``.

    ``tv:NAME``/``timm:NAME`` models and ``imagefolder:PATH`` datasets pass: their names are checked when they are
    built.
    """
    if name is None or name in known_names(kind):
        return
    if any(name.startswith(prefix) and name != form for prefix, form in _PREFIXED.get(kind, ())):
        return
    raise ConfigError(Registry(kind).unknown_message(name, known_names(kind)))
