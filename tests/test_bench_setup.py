"""bench/ times the network the trainer trains: every benchmark gets its set-up from the trainer's
own ``build_training`` (through ``bench.common.training_setup``), and none patches eed's modules."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import torch

from eed.config import load_config
from eed.engine.trainer import Callback, train

ROOT = Path(__file__).resolve().parents[1]
BENCH = sorted((ROOT / "bench").glob("*.py"))
# What builds a set-up by hand: the trainer's set-up is built by eed.engine.setup.build_training alone.
HAND_BUILT = ("create_model", "create_backbone", "build_optimizer", "build_scheduler", "seed_everything")


def bench_common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def eed_names(tree: ast.AST) -> set[str]:
    """Names a module binds to eed's modules, classes and functions (``import eed.x as y``, ``from eed.x import z``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                (alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name.startswith("eed")
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eed"):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def patches(source: str) -> list[str]:
    """Assignments to an attribute of something imported from eed, and setattr/monkeypatch calls."""
    tree = ast.parse(source)
    bound = eed_names(tree)
    found = []
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else []
        )
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute):
                    base = part
                    while isinstance(base, ast.Attribute):
                        base = base.value
                    if isinstance(base, ast.Name) and base.id in bound:
                        found.append(f"line {node.lineno}: {ast.unparse(target)} = ...")
                        break
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found + [
        f"monkeypatch at line {i}" for i, line in enumerate(source.splitlines(), 1) if "monkeypatch" in line
    ]


def test_the_patch_finder_finds_patches():
    assert patches("from eed.engine import loops\nloops.RefreshClock = object\n") == [
        "line 2: loops.RefreshClock = ..."
    ]
    assert patches("import eed.engine.trainer as trainer\ntrainer.console.quiet = True\n") == [
        "line 2: trainer.console.quiet = ..."
    ]
    assert patches("from eed.engine import loops\nsetattr(loops, 'x', 1)\n") == ["line 2: setattr(loops, 'x', 1)"]
    assert patches("import os\nos.environ['A'] = '1'\nclass C:\n    pass\nC.x = 1\n") == []


def test_bench_builds_no_set_up_by_hand_and_patches_no_eed_module():
    assert BENCH, "bench/*.py not found"
    for path in BENCH:
        source = path.read_text()
        assert not patches(source), f"{path.name} patches eed: {patches(source)}"
        called = sorted(
            {
                node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
            }
            & set(HAND_BUILT)
        )
        assert not called, f"{path.name} builds the set-up by hand ({', '.join(called)}): use common.training_setup"


class InitialWeights(Callback):
    def on_train_start(self, setup) -> None:
        self.weights = {key: value.detach().clone() for key, value in setup.model.state_dict().items()}


def test_bench_and_the_trainer_start_from_the_same_network(tmp_path):
    """Same config and seed: the same initial weights (model.init, stem_relu and width included)."""
    from eed.data import prepare

    config = load_config(
        None,
        [
            "data.dataset=synthetic",
            "data.backend=tensor",
            "data.val_size=32",
            f"data.prepared_dir={tmp_path / 'data'}",
            "data.synthetic.num_train=96",
            "data.synthetic.num_test=32",
            "data.train_subset=0",
            "data.num_workers=1",
            "train.epochs=1",
            "train.batch_size=32",
            "train.device=cpu",
            "tracking.enabled=false",
            "seed=3",
            "reference=official",
        ],
    )  # the release's stem (no ReLU) and a width from the preset: what a hand-built net missed
    prepare(config)
    bench = bench_common().training_setup(config)
    captured = InitialWeights()
    train(config, tmp_path / "train", callbacks=[captured])
    assert bench.config.model.width == 16 and bench.config.model.stem_relu is False
    assert isinstance(bench.model.stem[2], torch.nn.Identity)
    assert captured.weights.keys() == bench.model.state_dict().keys()
    assert all(torch.equal(captured.weights[key], value) for key, value in bench.model.state_dict().items())
