"""The package's layers, checked: a module imports only from its own layer or those before it.

The order (``cirl/__init__.py`` and ``docs/architecture.md`` say what each holds):

    base < data < models < method < lineage < deploy < audit < tuning < orchestration

Every import counts, those inside functions included: a lazy import that reaches up is still a
dependency a newcomer cannot see from the layout. Inside a layer, modules must not import each
other in a cycle. ``components/`` and ``pipelines/`` sit above all of it (they call
``cirl.orchestration.tasks``); ``benchmarks/`` and ``tests/`` may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cirl"
LAYERS = (
    "base", "data", "models", "method", "lineage", "deploy", "audit", "tuning", "orchestration",
)  # fmt: skip
# modules at the top of the package that belong to a layer other than base
TOP_LEVEL = {"__main__": "orchestration"}


def layer_of(module: str) -> str:
    """``cirl.method.train`` -> ``method``; a top-level module is base (or as TOP_LEVEL says)."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) >= 2 and parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    return "base"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every ``cirl`` module ``path`` imports, with its line (``from cirl.x import y`` counts
    ``cirl.x.y`` when that is a module, else ``cirl.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "cirl"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "cirl":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.append((node.lineno, child if _is_module(child) else node.module))
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def graph() -> dict[str, set[str]]:
    return {
        module_name(p): {m for _, m in imports(p) if m != "cirl" and m != module_name(p)}
        for p in _sources()
    }


def test_every_module_is_in_a_layer_that_docs_name():
    architecture = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    missing = [m for m in graph() if f"`{m.removeprefix('cirl.')}`" not in architecture]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_imports_point_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in _sources():
        here = module_name(path)
        for line, target in imports(path):
            if rank[layer_of(target)] > rank[layer_of(here)]:
                upward.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({layer_of(here)}) imports "
                    f"{target} ({layer_of(target)})"
                )
    assert not upward, "imports reaching up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "source", ["import cirl.lineage.tracking\n", "from cirl.lineage import tracking\n"]
)
def test_the_check_sees_an_upward_import(tmp_path, source):
    """The checker itself: a data module importing lineage is reported."""
    path = PACKAGE / "data" / "manifest.py"
    fake = tmp_path / "mod.py"
    fake.write_text(source)
    targets = [m for _, m in imports(fake)]
    assert targets == ["cirl.lineage.tracking"]
    assert LAYERS.index(layer_of(targets[0])) > LAYERS.index(layer_of(module_name(path)))


def test_old_paths_are_the_moved_modules():
    import importlib
    import warnings

    import cirl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, layer in cirl.MOVED.items():
            old = importlib.import_module(f"cirl.{name}")
            assert old is importlib.import_module(f"cirl.{layer}.{name}"), name
    with pytest.warns(DeprecationWarning, match="cirl.method.train"):
        import sys

        sys.modules.pop("cirl.train", None)
        importlib.import_module("cirl.train")


# "cirl.*" strings that are not tag keys: a package name, the synthetic generator's recorded name
NOT_TAGS = {"cirl.packaged", "cirl.synth"}


def test_tag_keys_are_spelled_only_in_the_schema():
    """Writers and readers of ``cirl.*`` tags name them through ``cirl.lineage.schema.Tag``."""
    import re

    from cirl.lineage.schema import Tag

    key = re.compile(r"^cirl\.[a-z_0-9]+$")
    spelled = []
    for path in _sources():
        if path.name == "schema.py" and path.parent.name == "lineage":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and key.match(node.value)
                and node.value not in NOT_TAGS
            ):
                spelled.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value}")
    assert not spelled, "tag keys spelled outside cirl.lineage.schema:\n" + "\n".join(spelled)
    assert len(Tag.keys()) == len(set(Tag.keys())) > 40
