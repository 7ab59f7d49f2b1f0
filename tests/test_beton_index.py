"""eed.data.beton: the index of a .beton file read without FFCV equals FFCV's own Reader's, on
raw (CIFAR-layout) and JPEG (ImageNet-layout) files that `eed prepare` wrote; a process that reads
a split into memory never imports FFCV; a damaged file is one DataError line naming it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from eed.config import load_config
from eed.data import DataError, prepare
from eed.data.beton import HEADER, read_index
from eed.data.ffcv_import import import_ffcv
from tests.conftest import write_cifar10, write_image_folders


@pytest.fixture(scope="module")
def raw_and_jpeg(tmp_path_factory) -> list[Path]:
    """Every split's .beton of a small CIFAR-10 (raw pixels) and of an ImageNet layout (JPEG)."""
    base = tmp_path_factory.mktemp("betons")
    write_cifar10(base / "cifar", per_class_train=6, per_class_test=3)
    write_image_folders(base / "folders", classes=3, train_per_class=5, val_per_class=2)
    files = []
    for dataset, root, extra in (
        ("cifar10", base / "cifar", ["data.val_size=10"]),
        ("imagenet", base / "folders", ["data.val_size=3", "data.max_resolution=48", "model.arch=imagenet_resnet18"]),
    ):
        config = load_config(
            None, [f"data.dataset={dataset}", f"data.root={root}", f"data.prepared_dir={base / dataset}", *extra]
        )
        manifest = prepare(config, console=Console(file=io.StringIO())).manifest
        files += [manifest.split_path(split) for split in manifest.splits]
    return files


def test_the_index_equals_ffcvs_reader_on_raw_and_jpeg_files(raw_and_jpeg):
    import_ffcv()
    from ffcv.reader import Reader

    modes = set()
    for path in raw_and_jpeg:
        ours, theirs = read_index(path), Reader(str(path))
        assert ours.field_names == theirs.field_names == ["image", "label"]
        assert ours.metadata.dtype == theirs.metadata.dtype
        assert ours.metadata.tobytes() == theirs.metadata.tobytes()
        assert np.array_equal(ours.alloc_table, theirs.alloc_table)
        assert len(ours.metadata) == theirs.num_samples > 0
        modes |= set(ours.column("image")["mode"].tolist())
    assert modes == {0, 1}  # both kinds of image were compared: jpg (0) and raw (1)


def test_reading_a_split_into_memory_does_not_import_ffcv(raw_and_jpeg):
    script = (
        "import sys; from eed.data import read_split, read_labels; "
        f"split = read_split({str(raw_and_jpeg[0].parent)!r}, 'test'); "
        f"labels = read_labels({str(raw_and_jpeg[0])!r}); "
        "print(len(split), len(labels), 'ffcv' in sys.modules)"
    )
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert said.split()[2] == "False", said


def damaged(source: Path, target: Path, how: str) -> Path:
    data = bytearray(source.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "short":
        data = data[: HEADER.itemsize - 1]
    elif how == "version":
        data[0] = 7
    elif how == "field":
        data[HEADER.itemsize] = 6  # the first field a TorchTensorField: not a field eed writes
    elif how == "table":
        data = data[:-5]
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "cut short"),
        ("short", "shorter than its header"),
        ("version", "format version 7, expected 2"),
        ("field", "field type ids [6]"),
        ("table", "allocation table is cut short"),
    ],
)
def test_a_damaged_file_is_one_line_naming_it(raw_and_jpeg, tmp_path, how, reason):
    path = damaged(raw_and_jpeg[0], tmp_path / "split.beton", how)
    with pytest.raises(DataError, match="not a readable .beton file") as error:
        read_index(path)
    message = str(error.value)
    assert str(path) in message and reason in message and "\n" not in message, message


def test_a_missing_file_and_a_missing_field_are_named(raw_and_jpeg, tmp_path):
    with pytest.raises(DataError, match=r"gone\.beton is missing"):
        read_index(tmp_path / "gone.beton")
    with pytest.raises(DataError, match="has no 'depth' field \\(fields: image, label\\)"):
        read_index(raw_and_jpeg[0]).column("depth")
