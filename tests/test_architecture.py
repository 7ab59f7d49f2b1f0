"""The layout README's "Architecture" section promises: no import cycles inside ``eed/``
(module-level, function-level and type-checking imports alike), every import running down the
layers of :data:`LAYERS`, MLflow spoken only in ``eed/tracking/``, and the pipeline stages as thin
shells over ``eed.stages`` whose DVC deps are the modules they run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eed"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: imports that never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return skipped


def import_graph(package: Path = PACKAGE, *, runtime: bool = False) -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}``, from every import statement anywhere
    in each file (module level, inside functions, under ``if TYPE_CHECKING``). ``runtime``: only
    the imports that run, and a package with a lazy ``__getattr__`` (PEP 562) counts as
    importing all of its submodules."""
    modules = {module_name(path, package.parent): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_only(tree) if runtime else set()
        if (
            runtime
            and is_package
            and any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)
        ):
            graph[name] |= {m for m in modules if m.rsplit(".", 1)[0] == name}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
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
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
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
                return [*stack[stack.index(target) :], target]
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
    # At run time, a TYPE_CHECKING import does not run; a lazy package imports its submodules.
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from eed.sub import b\n")
    (package / "sub" / "__init__.py").write_text("def __getattr__(name):\n    pass\n")
    assert import_graph(package)["eed.a"] == {"eed.sub.b"} and import_graph(package, runtime=True)["eed.a"] == set()
    assert import_graph(package, runtime=True)["eed.sub"] == {"eed.sub.b", "eed.sub.c"}


# The layers of eed/, lowest first (README, "Architecture"). A module may import its own component
# (the package or module named here) and anything in a lower layer; never a higher layer, nor
# another component of its own layer.
LAYERS: list[tuple[str, ...]] = [
    ("eed", "eed.errors"),  # the error kinds and their boundary
    ("eed.paths", "eed.methods", "eed.device", "eed.progress"),  # leaves: folders, the methods table, ...
    ("eed.config", "eed.paper_numbers"),  # params.yaml as typed classes; the paper's tables
    ("eed.data", "eed.models", "eed.tracking"),  # data, networks, the MLflow store
    ("eed.metrics", "eed.objectives"),  # maths on outputs; the loss
    ("eed.engine",),  # set-up, loops, checkpoints, the trainer
    ("eed.inference", "eed.reporting"),  # the served model; files, figures, tables
    ("eed.stages",),  # one entry function per command and stage
    ("eed.commands",),  # one Typer command each: parse, call, print
    ("eed.cli",),  # the `eed` application
]


def component(module: str) -> tuple[int, str]:
    """(layer, component) of a module: the longest component name that is it or a package above it."""
    found = [
        (len(name), layer, name)
        for layer, names in enumerate(LAYERS)
        for name in names
        if module == name or (module.startswith(name + ".") and name != "eed")
    ]
    if not found:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it to one")
    _, layer, name = max(found)
    return layer, name


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a higher layer, or of another component of the same layer."""
    wrong = []
    for module, targets in sorted(graph.items()):
        layer, own = component(module)
        for target in sorted(targets):
            target_layer, other = component(target)
            if target_layer > layer or (target_layer == layer and other != own):
                wrong.append(f"{module} -> {target}")
    return wrong


def test_the_layer_check_finds_upward_and_sideways_imports(tmp_path):
    package = tmp_path / "eed"
    for folder in ("data", "engine", "models"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("from eed.errors import X\n")
    (package / "errors.py").write_text("")
    (package / "data" / "loaders.py").write_text("from eed.config import C\nfrom eed.data import memory\n")
    (package / "data" / "memory.py").write_text("")
    (package / "models" / "net.py").write_text("")
    (package / "engine" / "trainer.py").write_text("from eed.data import loaders\n")
    assert upward_imports(import_graph(package)) == []
    (package / "data" / "loaders.py").write_text("def f():\n    from eed.engine import trainer\n")  # up
    (package / "data" / "memory.py").write_text("from eed.models import net\n")  # sideways
    assert upward_imports(import_graph(package)) == [
        "eed.data.loaders -> eed.engine.trainer",
        "eed.data.memory -> eed.models.net",
    ]


def test_every_import_runs_down_the_layers():
    """Type-checking imports count too: a type from a higher layer means the type lives too high."""
    wrong = upward_imports(import_graph())
    assert not wrong, "imports against the layers of LAYERS:\n" + "\n".join(wrong)


def test_eed_has_no_import_cycles():
    graph = import_graph()
    reached, todo = set(), ["eed.engine.trainer"]
    while todo:
        module = todo.pop()
        reached.add(module)
        todo += [target for target in graph[module] if target not in reached]
    assert "eed.data.loaders" in reached  # the graph sees through the trainer to the data layer
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_mlflow_is_spoken_only_in_the_tracking_module():
    speakers = sorted(str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if "mlflow" in path.read_text())
    assert speakers and all(speaker.startswith("eed/tracking/") for speaker in speakers), speakers


@pytest.mark.parametrize("stage", ["resolve", "prepare", "train", "evaluate", "flops", "rdm", "report"])
def test_pipeline_stages_are_thin_shells_over_eed_stages(stage):
    """Each stage script runs, inside the error boundary, a function of eed.stages.<stage>,
    the module its `eed` command calls too."""
    tree = ast.parse((ROOT / "pipeline" / f"{stage}.py").read_text())
    imported = {
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert ("eed.stages", "run_stage") in imported
    (entry,) = [name for module, name in imported if module == f"eed.stages.{stage}"]
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert [(call.func.id, [arg.id for arg in call.args]) for call in calls] == [("run_stage", [entry])]
    command = (ROOT / "eed" / "commands" / f"{stage}_cmd.py").read_text()
    assert f"from eed.stages import {stage} as stage" in command


# --------------------------------------------------------------------------- DVC stage dependencies


def stage_closure(stage: str, graph: dict[str, set[str]]) -> set[Path]:
    """The files of ``eed/`` that ``pipeline/<stage>.py`` runs: the modules it imports, theirs,
    and every package ``__init__`` on the way (Python executes those too)."""
    script = ROOT / "pipeline" / f"{stage}.py"
    start = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            start |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in graph else node.module for a in node.names
            }
        elif isinstance(node, ast.Import):
            start |= {a.name for a in node.names}
    seen: set[str] = set()
    todo = [m for m in start if m in graph]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            parts = module.split(".")
            todo += [*graph[module], *(".".join(parts[:i]) for i in range(1, len(parts)))]
    files = set()
    for module in seen:
        path = ROOT.joinpath(*module.split("."))
        files.add((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))
    return files | {script.relative_to(ROOT)}


def test_stage_closure_follows_function_level_imports():
    closure = stage_closure("prepare", import_graph(runtime=True))
    assert Path("eed/data/preparation.py") in closure  # through eed.data's lazy exports
    assert Path("eed/__init__.py") in closure
    evaluate = stage_closure("evaluate", import_graph(runtime=True))
    assert Path("eed/models/cifar_resnet.py") in evaluate  # through eed.models' imports of its modules


def test_stages_depend_only_on_the_code_of_their_work():
    """A backbone is not part of preparing data, nor the engine; no figure is part of training but
    the training curves it logs as it goes: editing one never re-runs those stages."""
    graph = import_graph(runtime=True)
    prepare, train = stage_closure("prepare", graph), stage_closure("train", graph)
    assert not any(path.parts[:2] in (("eed", "models"), ("eed", "engine")) for path in prepare), sorted(prepare)
    assert Path("eed/reporting/figures.py") not in train and Path("eed/reporting/files.py") not in train
    assert Path("eed/reporting/training_curves.py") in train
    assert Path("eed/reporting/figures.py") in stage_closure("evaluate", graph)


@pytest.mark.parametrize("stage", ["resolve", "prepare", "train", "evaluate", "flops", "rdm", "report"])
def test_every_module_a_stage_runs_is_one_of_its_dvc_deps(stage):
    """Otherwise a code change leaves a cached result that the new code would not produce."""
    deps = [
        Path(dep)
        for dep in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
        if not dep.startswith("$")
    ]
    uncovered = sorted(
        str(path)
        for path in stage_closure(stage, import_graph(runtime=True))
        if not any(path == dep or dep in path.parents for dep in deps)
    )
    assert not uncovered, f"dvc.yaml: stage {stage} runs {uncovered} but does not depend on them"
