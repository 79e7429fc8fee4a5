"""The core's shape: packages by layer, each importing only from the layers below it.

Every import counts, those under `if TYPE_CHECKING:` and inside functions included: a
layer that needs something of a layer above takes it as an argument or a `Protocol`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import css_core

ROOT = Path(css_core.__file__).resolve().parent
# each layer, and the layers it may import from (itself included); bottom first
BOTTOM = {"css_core.config", "css_core.errors", "css_core.types"}
LAYERS = {
    "css_core.operations": {"css_core.operations"},
    "css_core.providers": {"css_core.operations", "css_core.providers"},
    "css_core.jobs": {"css_core.operations", "css_core.providers", "css_core.jobs"},
    "css_core.edge": {"css_core.operations", "css_core.providers", "css_core.jobs", "css_core.edge"},
    "css_core.testing": {"css_core.operations", "css_core.providers", "css_core.jobs", "css_core.edge",
                         "css_core.testing"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The css_core modules `name` imports (the package's own `__init__` is the public API, not a layer)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != "css_core" and target != name:
                found.add(target)
    return found


def _layer(module: str) -> str:
    for layer in (*LAYERS, *BOTTOM):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "css_core"))
def test_a_module_imports_only_from_its_layer_and_below(name: str) -> None:
    layer = _layer(name)
    allowed = LAYERS.get(layer, set())
    upward = sorted(target for target in _imports(name, MODULES[name])
                    if _layer(target) not in BOTTOM and _layer(target) not in allowed)
    assert not upward, f"{name} ({layer}) imports from a layer above its own: {upward}"


def test_there_is_no_import_circle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items() if name != "css_core"}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import circle: " + " -> ".join([*visiting[visiting.index(name):], name])
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_says_its_role_and_what_it_may_import(layer: str) -> None:
    doc = importlib.import_module(layer).__doc__ or ""
    assert len(doc.split()) > 15 and "import" in doc, f"{layer}/__init__.py needs a docstring: its role, its imports"


def test_few_modules_sit_directly_in_css_core() -> None:
    top = [path.name for path in ROOT.glob("*.py")]
    assert len(top) <= 12, top


def test_moved_modules_still_import_for_a_release() -> None:
    with pytest.warns(DeprecationWarning, match="css_core.jobs.codec"):
        from css_core.codec import encode_request  # type: ignore[import-not-found]
    from css_core.jobs.codec import encode_request as moved

    assert encode_request is moved
