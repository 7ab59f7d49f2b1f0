"""The layout README's "Architecture" section promises: no import cycles inside ``eed/``
(module-level, function-level and type-checking imports alike), MLflow spoken only in
``eed/tracking.py``, and the pipeline stages as thin shells over ``eed.stages``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eed"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}``, from every import statement anywhere
    in each file (module level, inside functions, under ``if TYPE_CHECKING``)."""
    modules = {module_name(path, package.parent): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from eed.models import registry` imports the submodule, not the package's names.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles(tmp_path):
    package = tmp_path / "eed"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from eed.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from eed import a\n")  # function-level
    graph = import_graph(package)
    assert graph["eed.a"] == {"eed.sub.b"} and graph["eed.sub.b"] == {"eed.a"}
    assert find_cycle(graph) == ["eed.a", "eed.sub.b", "eed.a"]
    (package / "sub" / "b.py").write_text("from . import c\n")  # relative
    (package / "sub" / "c.py").write_text("from ..a import x\n")
    graph = import_graph(package)
    assert graph["eed.sub.b"] == {"eed.sub.c"} and graph["eed.sub.c"] == {"eed.a"}
    assert find_cycle(graph) == ["eed.a", "eed.sub.b", "eed.sub.c", "eed.a"]
    (package / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None


def test_eed_has_no_import_cycles():
    graph = import_graph()
    assert "eed.engine.trainer" in graph and "eed.data.loaders" in graph["eed.engine.trainer"] | {
        t for m in graph["eed.engine.trainer"] for t in graph[m]}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_mlflow_is_spoken_only_in_the_tracking_module():
    speakers = sorted(str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if "mlflow" in path.read_text())
    assert speakers == ["eed/tracking.py"]


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "flops", "rdm"])
def test_pipeline_stages_are_thin_shells_over_eed_stages(stage):
    """Each stage script runs, inside the error boundary, a function of eed.stages.<stage>,
    the module its `eed` command calls too."""
    tree = ast.parse((ROOT / "pipeline" / f"{stage}.py").read_text())
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert ("eed.stages", "run_stage") in imported
    (entry,) = [name for module, name in imported if module == f"eed.stages.{stage}"]
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert [(call.func.id, [arg.id for arg in call.args]) for call in calls] == [("run_stage", [entry])]
    command = (ROOT / "eed" / "commands" / f"{stage}_cmd.py").read_text()
    assert f"from eed.stages import {stage} as stage" in command
