"""Bad inputs give the right answer or one clear line: the project found from a subfolder (and
refused outside any), prepared data checked against its manifest, checkpoint errors that never
advise dropping torch's safe loading, and a non-finite-loss message that claims only what is on disk."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from eed.cli import app
from eed.config import load_config
from eed.errors import CheckpointError, DataError, NonFiniteLossError

runner = CliRunner()

# --------------------------------------------------------------------------- 1. which project

# command -> (module of its stage function, that function, positional arguments it needs)
STAGES = {
    "prepare": ("eed.stages.prepare", "prepare", []),
    "train": ("eed.stages.train", "train", []),
    "evaluate": ("eed.stages.evaluate", "evaluate", ["best.pt"]),
    "rdm": ("eed.stages.rdm", "rdm", ["best.pt"]),
    "compare": ("eed.stages.compare", "compare", []),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose params.yaml differs from the built-in defaults (seed 7)."""
    root = tmp_path / "proj"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "params.yaml").write_text("seed: 7\n")
    return root


def capture_stage(monkeypatch: pytest.MonkeyPatch, command: str) -> list:
    """Replace ``command``'s stage function by one recording the config it is given."""
    import importlib

    module, name, _ = STAGES[command]
    seen: list = []

    def stage(config, *args, **kwargs):  # a result without a rank-0 report: `eed train` draws no figures
        seen.append(config)
        return SimpleNamespace(test_metrics={})

    monkeypatch.setattr(importlib.import_module(module), name, stage)
    return seen


def outside_any_project(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    if any((p / "params.yaml").is_file() or (p / ".dvc").is_dir() for p in folder.resolve().parents):
        pytest.skip(f"a folder above {folder} looks like a project")
    return folder


@pytest.mark.parametrize("command", list(STAGES))
def test_a_subfolder_uses_the_projects_params(command, project, monkeypatch):
    seen = capture_stage(monkeypatch, command)
    monkeypatch.chdir(project / "sub" / "deeper")
    result = runner.invoke(app, [command, *STAGES[command][2]])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and seen[0].seed == 7  # the project's params.yaml, not the defaults (seed 0)


def test_a_dvc_project_without_params_runs_on_the_defaults(tmp_path, monkeypatch):
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir()
    seen = capture_stage(monkeypatch, "train")
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert runner.invoke(app, ["train"]).exit_code == 0 and seen[0].seed == 0


def test_relative_paths_and_the_store_follow_the_project_from_a_subfolder(project, monkeypatch):
    from eed.data.manifest import dataset_dir
    from eed.tracking import resolve_tracking_uri

    monkeypatch.chdir(project / "sub")
    config = load_config(project / "params.yaml")
    assert config.data.resolved_root() == project / "data" / "raw"
    assert dataset_dir(config) == project / "data" / "prepared" / config.data.dataset
    assert resolve_tracking_uri(config) == f"sqlite:///{project / 'mlflow.db'}"


def test_a_dvc_temporary_copy_reads_its_own_params_and_logs_to_the_repository(project, monkeypatch):
    """`dvc exp run --temp` runs in <repo>/.dvc/tmp/exps/<name>/, a copy holding the experiment's
    params.yaml and outputs, while the store and raw data stay the repository's."""
    from eed.data.manifest import dataset_dir
    from eed.paths import project_root
    from eed.tracking import resolve_tracking_uri

    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("seed: 9\n")
    seen = capture_stage(monkeypatch, "train")
    monkeypatch.chdir(copy)
    assert runner.invoke(app, ["train"]).exit_code == 0 and seen[0].seed == 9
    assert project_root() == project.resolve()
    assert dataset_dir(seen[0]) == copy.resolve() / "data" / "prepared" / seen[0].data.dataset  # the copy's outs
    assert resolve_tracking_uri(seen[0]) == f"sqlite:///{project.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize("command", list(STAGES))
def test_outside_any_project_refuses_in_one_line_and_writes_nothing(command, tmp_path, monkeypatch):
    folder = outside_any_project(tmp_path)
    seen = capture_stage(monkeypatch, command)
    monkeypatch.chdir(folder)
    result = runner.invoke(app, [command, *STAGES[command][2]])
    assert result.exit_code == 2 and not seen
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert str(folder.resolve()) in message.replace("\n", "") and "--params" in message
    assert list(folder.iterdir()) == []  # no mlflow.db, no outputs


def test_outside_any_project_an_explicit_params_file_is_used(project, tmp_path, monkeypatch):
    folder = outside_any_project(tmp_path)
    seen = capture_stage(monkeypatch, "train")
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["train", "--params", str(project / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert seen[0].seed == 7


# --------------------------------------------------------------------------- 2. corrupt prepared data


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=synthetic",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.val_size=0",
            "data.synthetic.num_train=32",
            "data.synthetic.num_test=16",
            "data.synthetic.num_classes=2",
            "data.synthetic.image_size=8",
            "data.train_subset=0",
            "train.batch_size=8",
            "train.device=cpu",
            *extra,
        ],
    )


def tiny_data(tmp_path: Path, *extra: str):
    from eed.data import prepare

    config = tiny_config(tmp_path, *extra)
    prepare(config, console=Console(file=io.StringIO()))
    return config


def flip_middle_bytes(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        chunk = handle.read(16)
        handle.seek(size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    assert path.stat().st_size == size


def test_same_size_corruption_is_caught_before_training_and_evaluation(tmp_path):
    from eed.data import make_loader, read_split
    from eed.data.manifest import dataset_dir

    config = tiny_data(tmp_path)
    beton = dataset_dir(config) / "train.beton"
    flip_middle_bytes(beton)
    for backend in ("ffcv", "tensor"):
        chosen = config.model_copy(update={"data": config.data.model_copy(update={"backend": backend})})
        with pytest.raises(DataError, match=r"train\.beton.*sha256.*eed prepare") as error:
            make_loader(chosen, "train", train=True)
        assert str(beton) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"train\.beton"):
        read_split(config, "train")
    assert len(read_split(config, "test")) == 16  # the intact split still reads

    sized = tiny_config(tmp_path, "data.verify=size", "data.backend=tensor")
    assert len(make_loader(sized, "train", train=True)) == 4  # size only: no hashing, no error


def test_a_changed_size_is_caught_even_without_hashing(tmp_path):
    from eed.data import make_loader
    from eed.data.manifest import dataset_dir

    config = tiny_data(tmp_path, "data.verify=size")
    with open(dataset_dir(config) / "train.beton", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match=r"train\.beton has \d+ bytes"):
        make_loader(config, "train", train=True)


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    import eed.data.manifest as manifest_module
    from eed.data import make_loader, read_split

    config = tiny_data(tmp_path, "data.backend=tensor")
    manifest_module._DIGESTS.clear()  # as in a new process (prepare hashed them in this one)
    hashed: list[Path] = []
    original = manifest_module._hash_file
    monkeypatch.setattr(manifest_module, "_hash_file", lambda path: hashed.append(path) or original(path))
    for _ in range(3):
        make_loader(config, "train", train=True)
        make_loader(config, "test", train=False)
    read_split(config, "test")
    assert sorted(p.name for p in hashed) == ["test.beton", "train.beton"]


def test_verify_is_not_a_training_setting():
    from eed.config import is_training_key

    assert load_config(None).data.verify == "sha256"
    assert not is_training_key("data.verify")
    assert load_config(Path(__file__).resolve().parents[1] / "params.yaml").data.verify == "sha256"


# --------------------------------------------------------------------------- 3. checkpoints, NaN


class NotATensor:
    """What another tool's pickle may hold: an instance of its own class."""

    def __init__(self) -> None:
        self.value = 3


def test_a_checkpoint_holding_objects_is_refused_without_advice_to_drop_the_safety(tmp_path):
    from eed.engine.checkpoint import Checkpoint

    path = tmp_path / "other-tool.pt"
    torch.save({"format": "eed-checkpoint", "version": 2, "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError) as error:
        Checkpoint.load(path)
    message = str(error.value)
    assert "weights_only" not in message and "can still be loaded" not in message and "\n" not in message
    assert str(path) in message and "not an eed checkpoint" in message and "NotATensor" in message
    assert "\x1b" not in message  # torch's message holds terminal escapes

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a pickle at all" * 7)
    with pytest.raises(CheckpointError, match="not a readable eed checkpoint") as error:
        Checkpoint.load(garbage)
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_missing_its_model_keys_names_them(tmp_path):
    from eed.engine.checkpoint import Checkpoint

    path = tmp_path / "partial.pt"
    torch.save({"format": "eed-checkpoint", "version": 2}, path)
    with pytest.raises(CheckpointError, match="arch, num_classes, width, exits, model"):
        Checkpoint.load(path)
    torch.save(
        {"format": "eed-checkpoint", "version": 2, "arch": "resnet18", "num_classes": 2, "width": 4, "exits": True},
        path,
    )
    with pytest.raises(CheckpointError, match=r"lacks model\b"):
        Checkpoint.load(path)
    torch.save({"format": "eed-checkpoint", "version": 3, "network": {"arch": "resnet18"}}, path)
    with pytest.raises(CheckpointError, match="not a complete eed checkpoint"):
        Checkpoint.load(path)


def poisoned_epoch(**kwargs) -> str:
    """The message of ``train_one_epoch`` on two tiny steps whose second loss is NaN."""
    from eed.engine.loops import train_one_epoch
    from eed.engine.optim import build_optimizer, build_scheduler
    from eed.engine.runtime import setup_runtime
    from eed.models.registry import create_model
    from eed.objectives import ExitEnsembleObjective

    config = load_config(None, ["train.device=cpu", "model.width=4"])
    torch.manual_seed(0)
    model = create_model("resnet18", 3, 4, exits=True)
    objective = ExitEnsembleObjective("eed", config.loss, model.num_classifiers)
    calls = []

    def poisoned(output, target):
        result = objective(output, target)
        calls.append(1)
        if len(calls) == 2:
            result.total = result.total * float("nan")
        return result

    batches = [(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2,))) for _ in range(2)]
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, len(batches))
    with pytest.raises(NonFiniteLossError) as error:
        train_one_epoch(
            model,
            poisoned,
            batches,
            optimizer,
            scheduler,
            setup_runtime(config.train),
            epoch=1,
            classifier_names=["exit1", "exit2", "exit3", "main"],
            **kwargs,
        )
    return str(error.value)


def test_the_non_finite_loss_message_claims_a_kept_checkpoint_only_when_there_is_one(tmp_path):
    """The loop names the epoch, steps and terms; the trainer adds what its checkpoint files keep."""
    from eed.engine.trainer import CheckpointFiles

    message = poisoned_epoch()
    assert "non-finite loss at epoch 1" in message and "is kept" not in message

    files = CheckpointFiles(tmp_path / "checkpoints", writes=True)
    missing = files.what_is_kept()
    assert "not saved" in missing
    assert str(files.last) in missing and "is kept" not in missing and "no checkpoint" in missing

    files.folder.mkdir()
    files.last.write_bytes(b"a checkpoint")
    assert f"{files.last} is kept" in files.what_is_kept()
