"""Shared fixtures: the real CIFAR-100 (extracted once into a cache) and its prepared
``.beton`` files (written once into a cache, then reused by every session), factories that
write small datasets in the real on-disk formats (CIFAR pickles, ImageNet folders), and a tiny
multi-exit network trained briefly (``tiny_trained``: early exit on a network whose classifiers
disagree and whose confidences spread, as a random one's do not).

Caches live in ``$XDG_CACHE_HOME/eed-test-data`` (default ``~/.cache/eed-test-data``),
keyed by the archive's sha256. ``$EED_TEST_CIFAR100`` overrides the source: a
``cifar-100-python.tar.gz`` archive, or a folder that already holds ``cifar-100-python/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eed.models.backbone import Backbone
from eed.models.multi_exit import MultiExitNet, conv_bn_relu

# The project's machines keep the real CIFAR-100 in shared/ beside the repository.
SHARED_CIFAR100_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-100-python.tar.gz"
CIFAR100_ENV = "EED_TEST_CIFAR100"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one intra-op thread per process (each worker and every process a test
    starts inherits OMP_NUM_THREADS): with two workers on two cores, torch's default of one thread
    per core oversubscribes the cores, and OpenMP threads spin waiting for each other (BENCHMARKS.md,
    *Test suite*). A value the user set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        if "torch" in sys.modules:  # imported already (by a plugin): OMP_NUM_THREADS is read at import
            sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first (stable order otherwise): under `make test`'s two pytest-xdist
    workers, a long test started last would leave one core idle while it finishes."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their data roots and tracking stores themselves: a user's (or make's)
    $EED_DATA_ROOT / $MLFLOW_TRACKING_URI / DVC variables must not redirect them."""
    for name in ("EED_DATA_ROOT", "MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "eed-test-data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_once(archive: Path, target: Path) -> None:
    """Extract into a temporary sibling, then rename: ``target`` exists only when complete
    (parallel sessions race safely; the loser discards its copy)."""
    if target.is_dir():
        return
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        staging.chmod(0o755)  # mkdtemp made it private; the cache is shared between sessions
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar100_source() -> tuple[Path, str]:
    """``(data root holding cifar-100-python/, cache key)`` of the real CIFAR-100."""
    override = os.environ.get(CIFAR100_ENV)
    source = Path(override).expanduser() if override else SHARED_CIFAR100_ARCHIVE
    if source.is_dir():
        if not (source / "cifar-100-python").is_dir():
            pytest.fail(f"${CIFAR100_ENV}={source} holds no cifar-100-python/ folder")
        return source, hashlib.sha256(str(source.resolve()).encode()).hexdigest()
    if not source.is_file():
        pytest.fail(
            f"the real CIFAR-100 archive is missing: {source}. The data tests need it (see "
            f"shared/data/README.md beside the repository); set ${CIFAR100_ENV} to the archive or to a "
            "folder holding "
            "cifar-100-python/."
        )
    key = _sha256(source)
    root = _cache_dir() / f"cifar100-{key[:16]}"
    _extract_once(source, root)
    return root, key


@pytest.fixture(scope="session")
def cifar100_root(cifar100_source: tuple[Path, str]) -> Path:
    """A data root holding the extracted real CIFAR-100 (``<root>/cifar-100-python/``)."""
    return cifar100_source[0]


@pytest.fixture(scope="session")
def cifar100_prepared(cifar100_source: tuple[Path, str]) -> Path:
    """The ``data.prepared_dir`` holding the real CIFAR-100 prepared with the default
    params (split_seed 0, val_size 5000): pass it as ``data.prepared_dir=<this>``.

    Written once into the cache; later sessions only check it is up to date (~2 s).
    Treat it as read-only.
    """
    from rich.console import Console

    from eed.config import DATA_ROOT_ENV, load_config
    from eed.data import prepare

    root, key = cifar100_source
    prepared_dir = _cache_dir() / f"prepared-cifar100-{key[:16]}"
    config = load_config(
        None,
        [
            f"data.root={root}",
            f"data.prepared_dir={prepared_dir}",
            "data.dataset=cifar100",
            "data.split_seed=0",
            "data.val_size=5000",
        ],
    )
    saved_root = os.environ.pop(DATA_ROOT_ENV, None)  # the test data, not the developer's
    try:
        # One writer at a time: pytest-xdist workers (and parallel sessions) share the cache.
        with open(_cache_dir() / f"{prepared_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            prepare(config, console=Console(stderr=True, quiet=True))
    finally:
        if saved_root is not None:
            os.environ[DATA_ROOT_ENV] = saved_root
    return prepared_dir


# --------------------------------------------------------------------------- small datasets


def cifar_batch_pickle(images_nhwc: np.ndarray, labels: np.ndarray, label_key: str) -> bytes:
    """One batch in the official format: dict with uint8 N x 3072 channel-major ``data``."""
    data = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).reshape(len(images_nhwc), -1)
    batch = {
        "batch_label": "test batch",
        label_key: [int(label) for label in labels],
        "data": data,
        "filenames": [f"image_{i:05d}.png" for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar10(
    root: Path, per_class_train: int = 10, per_class_test: int = 4, archive: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """A small CIFAR-10 in the official layout (5 data batches, test batch, batches.meta) under
    ``root/cifar-10-batches-py/`` (or as ``root/cifar-10-python.tar.gz``); returns its arrays:
    ``train_images`` (N x 32 x 32 x 3), ``train_labels``, ``test_images``, ``test_labels``."""
    from eed.data.catalog import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    files = {}
    parts = np.array_split(np.arange(len(arrays["train_labels"])), 5)
    for number, part in enumerate(parts, start=1):
        files[f"data_batch_{number}"] = cifar_batch_pickle(
            arrays["train_images"][part], arrays["train_labels"][part], "labels"
        )
    files["test_batch"] = cifar_batch_pickle(arrays["test_images"], arrays["test_labels"], "labels")
    files["batches.meta"] = pickle.dumps(
        {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10, "num_vis": 3072}, protocol=2
    )
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(exist_ok=True)
        for name, content in files.items():
            (folder / name).write_bytes(content)
    return arrays


@pytest.fixture
def make_cifar10() -> Callable[..., dict[str, np.ndarray]]:
    """:func:`write_cifar10`, as a fixture."""
    return write_cifar10


def write_image_folders(
    root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 2, seed: int = 0
) -> list[str]:
    """ImageNet-layout JPEGs of varying sizes in ``root/train/<wnid>/`` and ``root/val/<wnid>/``;
    returns the class folder names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"n{index:08d}" for index in range(classes)]
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                height, width = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                # A flat class colour plus noise, so the class is visible after cropping.
                pixels = np.clip(rng.normal(60 + 60 * label, 20, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{index}.JPEG", quality=95)
    return names


@pytest.fixture
def make_image_folders() -> Callable[..., list[str]]:
    """:func:`write_image_folders`, as a fixture."""
    return write_image_folders


# --------------------------------------------------------------------------- a trained tiny network

TINY_CLASSES = 4


def tiny_net(scale: int = 1) -> MultiExitNet:
    """Three stages of 8, 16 and 24 channels (times ``scale``), a classifier after each."""
    first, second, third = 8 * scale, 16 * scale, 24 * scale
    backbone = Backbone(
        stem=conv_bn_relu(3, first, 1),
        stages=[conv_bn_relu(first, first, 1), conv_bn_relu(first, second, 2), conv_bn_relu(second, third, 2)],
        stage_channels=[first, second, third],
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(third, TINY_CLASSES),
    )
    return MultiExitNet(backbone)


@pytest.fixture(scope="session")
def make_tiny_net():
    """:func:`tiny_net` itself, for tests that build networks of other widths."""
    return tiny_net


def signal_data(n: int, generator: torch.Generator, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise plus the label's pattern at a random strength: some samples easy, some hard."""
    labels = torch.randint(0, TINY_CLASSES, (n,), generator=generator)
    strength = torch.rand(n, 1, 1, 1, generator=generator) * 1.5
    return torch.randn(n, 3, 16, 16, generator=generator) + strength * patterns[labels], labels


@pytest.fixture(scope="module")
def tiny_trained() -> tuple[MultiExitNet, torch.Tensor, torch.Tensor]:
    """(network in eval mode, 256 images 3 x 16 x 16, their labels): 40 SGD steps on 4 classes."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randn(TINY_CLASSES, 3, 16, 16, generator=generator)
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):
        images, labels = signal_data(64, generator, patterns)
        loss = sum(F.cross_entropy(z, labels) for z in net(images).logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = signal_data(256, generator, patterns)
    return net.eval(), images, labels
