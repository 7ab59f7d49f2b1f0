"""`eed prepare`: .beton files and manifest, "up to date", atomic writes, params checks,
and nothing written for bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from eed.config import load_config
from eed.data import DataError, load_manifest, make_loader, prepare, read_split
from eed.data.catalog import CIFAR100_CLASSES
from eed.data.manifest import MANIFEST_NAME, dataset_dir
from eed.data.memory import read_labels


def synthetic_config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=synthetic",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.val_size=40",
            "data.synthetic.num_train=200",
            "data.synthetic.num_test=60",
            "data.synthetic.num_classes=4",
            "data.train_subset=0",
            "train.batch_size=16",
            *extra,
        ],
    )


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_prepare_writes_three_betons_and_a_manifest_then_is_up_to_date(tmp_path):
    config = synthetic_config(tmp_path)
    result = prepare(config, console=recording_console())
    directory = dataset_dir(config)
    assert not result.up_to_date and result.directory == directory
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "test.beton", "train.beton", "val.beton"]

    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert manifest["dataset"] == "synthetic" and manifest["class_names"] == [f"class_{i:03d}" for i in range(4)]
    assert {name: record["num_samples"] for name, record in manifest["splits"].items()} == {
        "train": 160,
        "val": 40,
        "test": 60,
    }
    assert manifest["splits"]["val"]["class_counts"] == [10, 10, 10, 10]
    assert manifest["split_seed"] == 0 and manifest["val_size"] == 40 and manifest["eed_version"]
    assert manifest["source"]["fingerprint"].startswith("sha256:")
    assert manifest["fields"]["image"] == {
        "type": "RGBImageField",
        "write_mode": "raw",
        "max_resolution": None,
        "jpeg_quality": None,
    }
    assert manifest["image_shape"] == [32, 32, 3]
    for record in manifest["splits"].values():
        path = directory / record["file"]
        assert path.stat().st_size == record["bytes"] and record["sha256"].startswith("sha256:")
        assert len(read_labels(path)) == record["num_samples"]

    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    console = recording_console()
    again = prepare(config, console=console)
    assert again.up_to_date and "up to date" in console.file.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == mtimes


def test_same_input_gives_byte_identical_files(tmp_path):
    first = prepare(synthetic_config(tmp_path / "a"), console=recording_console()).manifest
    second = prepare(synthetic_config(tmp_path / "b"), console=recording_console()).manifest
    assert {k: v.sha256 for k, v in first.splits.items()} == {k: v.sha256 for k, v in second.splits.items()}


def test_changed_params_rewrite_and_val_size_zero_drops_the_val_split(tmp_path):
    prepare(synthetic_config(tmp_path), console=recording_console())
    smaller = prepare(synthetic_config(tmp_path, "data.val_size=20"), console=recording_console())
    assert not smaller.up_to_date and smaller.manifest.splits["val"].num_samples == 20
    config = synthetic_config(tmp_path, "data.val_size=0")
    result = prepare(config, console=recording_console())
    assert "val" not in result.manifest.splits and not (result.directory / "val.beton").exists()
    assert result.manifest.splits["train"].num_samples == 200
    with pytest.raises(DataError, match="no validation split was prepared"):
        make_loader(config, "val", train=False)


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    config = synthetic_config(tmp_path)
    prepare(config, console=recording_console())
    original = DatasetWriter.from_indexed_dataset
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(self.fname)
        if len(calls) == 2:  # train.beton is done; the interruption hits val.beton
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(synthetic_config(tmp_path, "data.val_size=20"), console=recording_console())
    directory = dataset_dir(config)
    assert not (directory / MANIFEST_NAME).exists()
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(DataError, match="no manifest.json.*eed prepare"):
        load_manifest(config)
    monkeypatch.undo()
    assert not prepare(config, console=recording_console()).up_to_date  # the next run repairs it


def test_corrupt_source_writes_nothing(tmp_path, make_cifar10):
    make_cifar10(tmp_path / "raw", archive=True)
    archive = tmp_path / "raw" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-3000])
    config = load_config(
        None,
        [
            "data.dataset=cifar10",
            f"data.root={tmp_path / 'raw'}",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.val_size=20",
        ],
    )
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepare(config, console=recording_console())
    assert not (tmp_path / "prepared").exists()


def test_unreadable_jpeg_names_the_file_and_writes_nothing(tmp_path, make_image_folders):
    names = make_image_folders(tmp_path / "raw", classes=2, train_per_class=3, val_per_class=1)
    broken = tmp_path / "raw" / "train" / names[1] / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    config = load_config(
        None,
        [
            "data.dataset=imagenet",
            f"data.root={tmp_path / 'raw'}",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.val_size=2",
            "data.num_workers=1",
            "model.arch=imagenet_resnet18",
        ],
    )
    with pytest.raises(DataError, match="broken.JPEG: cannot decode this image"):
        prepare(config, console=recording_console())
    assert list((tmp_path / "prepared" / "imagenet").iterdir()) == []


def test_loaders_refuse_data_prepared_with_other_params(tmp_path):
    prepare(synthetic_config(tmp_path), console=recording_console())
    for override, detail in [
        ("data.val_size=20", "data.val_size: prepared with 40, params say 20"),
        ("data.split_seed=3", "data.split_seed: prepared with 0, params say 3"),
        ("data.synthetic.num_classes=5", "data.synthetic.num_classes"),
    ]:
        with pytest.raises(DataError, match="re-run `eed prepare` \\(or `dvc repro prepare`\\)") as error:
            make_loader(synthetic_config(tmp_path, override), "train", train=True)
        assert detail in str(error.value)
    # The run's own seed, backend or subset are not preparation params.
    make_loader(synthetic_config(tmp_path, "seed=5", "data.backend=tensor"), "train", train=True)


def test_missing_or_damaged_prepared_files_are_clear_errors(tmp_path):
    config = synthetic_config(tmp_path)
    with pytest.raises(DataError, match="no prepared synthetic data in .*eed prepare"):
        load_manifest(config)
    prepare(config, console=recording_console())
    train_file = dataset_dir(config) / "train.beton"
    train_file.write_bytes(train_file.read_bytes()[:1000])
    with pytest.raises(DataError, match="train.beton has 1000 bytes.*eed prepare"):
        read_split(config, "train")
    assert not prepare(config, console=recording_console()).up_to_date  # repaired


def test_prepare_command_line(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils
    from typer.testing import CliRunner

    from eed.cli import app

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.delenv("EED_DATA_ROOT", raising=False)
    settings = [
        "data.dataset=synthetic",
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "data.val_size=40",
        "data.synthetic.num_train=200",
        "data.synthetic.num_test=60",
    ]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    runner = CliRunner()
    first = runner.invoke(app, ["prepare", *overrides])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "prepared" / "synthetic" / MANIFEST_NAME).is_file()
    second = runner.invoke(app, ["prepare", *overrides])
    assert second.exit_code == 0 and "up to date" in second.output
    missing = runner.invoke(
        app,
        [
            "prepare",
            "--set",
            "data.dataset=cifar10",
            "--set",
            f"data.root={tmp_path / 'none'}",
            "--set",
            f"data.prepared_dir={tmp_path / 'p2'}",
        ],
    )
    assert missing.exit_code == 3 and "CIFAR-10 not found" in missing.output
    assert "network is unreachable" in missing.output


@pytest.mark.slow
def test_real_cifar100_prepared_with_the_default_split(cifar100_prepared):
    config = load_config(None, [f"data.prepared_dir={cifar100_prepared}"])
    manifest = load_manifest(config)
    assert manifest.class_names == list(CIFAR100_CLASSES) and manifest.num_classes == 100
    sizes = {split: record.num_samples for split, record in manifest.splits.items()}
    assert sizes == {"train": 45_000, "val": 5_000, "test": 10_000}
    for split, per_class in (("train", 450), ("val", 50), ("test", 100)):
        labels = read_labels(manifest.split_path(split))
        assert np.bincount(labels, minlength=100).tolist() == [per_class] * 100
        assert manifest.splits[split].class_counts == [per_class] * 100
