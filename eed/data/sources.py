"""Raw datasets: find (or download) the original files, read them, check their content.

* ``cifar10`` / ``cifar100``: the official python layout, either extracted
  (``<root>/cifar-10-batches-py/``, ``<root>/cifar-100-python/``) or as the ``.tar.gz``
  archive in ``<root>`` (members are read straight from the archive; nothing is extracted).
  When neither is there, torchvision downloads the archive (official URL, md5-verified).
  The files are then checked by content (shapes, dtypes, label ranges, class balance,
  class names), never by md5, so any pixel-exact copy is accepted.
* ``imagenet``: ``train/`` and ``val/`` class folders (torchvision's ImageFolder layout) in
  ``<root>/imagenet/`` or ``<root>/``. The official validation set is the test split.
* ``synthetic``: random images seeded by ``data.split_seed``, for tests and benchmarks only.

Every reader returns a :class:`RawDataset`. Its ``train`` and ``test`` sets index like the
datasets FFCV's ``DatasetWriter`` takes: ``images[i] -> (H x W x 3 uint8 RGB array, label)``.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.console import Console

from eed.config import DATA_ROOT_ENV, Config
from eed.data.catalog import CIFAR10_CLASSES, CIFAR100_CLASSES
from eed.errors import DataError

CIFAR_IMAGE_SIZE = 32


# --------------------------------------------------------------------------- image sets


class ImageArrays:
    """Images held in memory: ``images`` uint8 N x H x W x 3 (RGB), ``labels`` int64 N."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


class ImageFiles:
    """Image files on disk (ImageNet), decoded to RGB arrays when indexed.

    FFCV's writer indexes this from worker processes, where an exception would leave the
    writer waiting forever. So a file that fails to decode yields a small black image and
    is counted in shared memory; :meth:`raise_if_unreadable` reports it after writing.
    """

    def __init__(self, paths: list[str], labels: np.ndarray):
        self.paths = paths
        self.labels = labels
        self._failed = multiprocessing.Value("q", 0)
        self._first_failed = multiprocessing.Value("q", -1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception:
            with self._failed.get_lock():
                self._failed.value += 1
                if self._first_failed.value < 0:
                    self._first_failed.value = index
            pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        return pixels, int(self.labels[index])

    def raise_if_unreadable(self) -> None:
        if self._failed.value:
            path = self.paths[self._first_failed.value]
            raise DataError(
                f"{path}: cannot decode this image ({self._failed.value} unreadable file(s) in all); "
                "replace or delete the broken files, then re-run `eed prepare`"
            )


ImageSet = ImageArrays | ImageFiles


@dataclass
class RawDataset:
    """A dataset as read from its source, before splitting."""

    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    location: str  # where it was read from, for messages and the manifest
    # "sha256:..." of the content: pixels and labels for in-memory datasets; for image
    # folders, the file list with sizes (hashing ImageNet's 150 GB on every run is too slow).
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_raw_dataset(config: Config, console: Console | None = None) -> RawDataset:
    """Read (downloading CIFAR if needed) and check the dataset ``config.data`` names."""
    console = console or Console(stderr=True)
    name = config.data.dataset
    if name == "synthetic":
        return make_synthetic(config)
    root = config.data.resolved_root()
    if name in CIFAR_LAYOUTS:
        return read_cifar(name, root, console=console)
    if name == "imagenet":
        return read_image_folders(root)
    raise DataError(f"unknown dataset {name!r}")


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarLayout:
    """What differs between CIFAR-10 and CIFAR-100; file names, URL and md5 come from torchvision."""

    title: str
    torchvision_class: str
    names_key: str  # key of the class list in the meta pickle
    class_names: tuple[str, ...]

    def torchvision_dataset(self) -> Any:
        import torchvision.datasets  # late import: ~3 s, only needed here

        return getattr(torchvision.datasets, self.torchvision_class)


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("CIFAR-10", "CIFAR10", "label_names", CIFAR10_CLASSES),
    "cifar100": CifarLayout("CIFAR-100", "CIFAR100", "fine_label_names", CIFAR100_CLASSES),
}


def read_cifar(name: str, root: str | Path, *, download: bool = True, console: Console | None = None) -> RawDataset:
    """Read CIFAR-10/100 from ``root`` (extracted folder, else archive, else download) and check it."""
    layout = CIFAR_LAYOUTS[name]
    spec = layout.torchvision_dataset()
    root = Path(root)
    folder, archive = root / spec.base_folder, root / spec.filename
    train_files = [file_name for file_name, _md5 in spec.train_list]
    test_files = [file_name for file_name, _md5 in spec.test_list]
    meta_file = spec.meta["filename"]
    wanted = [*train_files, *test_files, meta_file]
    console = console or Console(stderr=True)

    if all((folder / file_name).is_file() for file_name in wanted):
        location = folder
        with console.status(f"Reading {layout.title} from {folder}…"):
            files = {file_name: ((folder / file_name).read_bytes(), str(folder / file_name)) for file_name in wanted}
    else:
        if not archive.is_file():
            if folder.is_dir():
                missing = [file_name for file_name in wanted if not (folder / file_name).is_file()]
                raise DataError(
                    f"{folder} is incomplete: {', '.join(missing)} missing. Delete the folder and "
                    f"put {spec.filename} in {root} (or let `eed prepare` download it)."
                )
            if not download:
                raise DataError(_missing_message(layout, spec, root, "downloading is disabled"))
            _download(layout, spec, root, console)
        location = archive
        with console.status(f"Reading {layout.title} from {archive}…"):
            files = _read_archive_members(archive, spec.base_folder, wanted, spec.url)

    num_classes = len(layout.class_names)
    meta_bytes, meta_display = files[meta_file]
    class_names = _check_class_names(_unpickle(meta_bytes, meta_display), layout, meta_display)
    splits = {}
    for split, file_names in (("train", train_files), ("test", test_files)):
        parts = [
            _batch_arrays(_unpickle(*files[file_name]), files[file_name][1], num_classes) for file_name in file_names
        ]
        images = np.ascontiguousarray(np.concatenate([images for images, _ in parts]))
        labels = np.concatenate([labels for _, labels in parts])
        _check_balance(labels, num_classes, f"{location} ({split} images)")
        splits[split] = ImageArrays(images, labels)
    return RawDataset(
        name, class_names, splits["train"], splits["test"], str(location), fingerprint_arrays(class_names, splits)
    )


def _missing_message(layout: CifarLayout, spec: Any, root: Path, why: str) -> str:
    source = f"${DATA_ROOT_ENV}" if os.environ.get(DATA_ROOT_ENV) else "data.root"
    return (
        f"{layout.title} not found: looked for the folder {root / spec.base_folder}/ and the archive "
        f"{root / spec.filename} (data root {root}, from {source}), and {why}. "
        f"Put {spec.filename} (from {spec.url}) in {root}, or set ${DATA_ROOT_ENV} or data.root "
        f"to a folder that holds it."
    )


def _download(layout: CifarLayout, spec: Any, root: Path, console: Console) -> None:
    """torchvision's md5-verified download into a staging folder, then a rename: a failed
    or interrupted download never leaves a partial archive that looks like the real one."""
    from torchvision.datasets import utils as tv_utils

    created_root = not root.exists()
    staging = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        console.print(f"Downloading {layout.title} from {spec.url} to {root}")
        tv_utils.download_url(spec.url, str(staging), filename=spec.filename, md5=spec.tgz_md5)
        os.replace(staging / spec.filename, root / spec.filename)
    except Exception as error:
        raise DataError(_missing_message(layout, spec, root, f"downloading it failed ({error})")) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()


def _read_archive_members(archive: Path, base_folder: str, names: list[str], url: str) -> dict[str, tuple[bytes, str]]:
    """``{name: (content, "archive:member")}``, read in one pass over the (gzip) archive."""
    wanted = {f"{base_folder}/{name}": name for name in names}
    found: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has content
                    found[name] = (handle.read(), f"{archive}:{member.name}")
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{archive}: cannot read the archive ({type(error).__name__}: {error}); it is truncated "
            f"or corrupt. Delete it and download it again from {url}."
        ) from None
    missing = [member for member, name in wanted.items() if name not in found]
    if missing:
        raise DataError(
            f"{archive}: not a {base_folder} archive: {', '.join(missing)} missing. "
            f"Delete it and download it again from {url}."
        )
    return found


# numpy's stubs leave out the private _frombuffer, and declare _reconstruct Final (the fallback
# import below re-binds the name); both exist at runtime.
try:  # numpy >= 2 moved the pickle helpers to numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer  # pyright: ignore[reportAttributeAccessIssue]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # pyright: ignore[reportGeneralTypeIssues]
    from numpy.core.numeric import _frombuffer as _np_frombuffer


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of lists, strings and numpy arrays) and refuses any
    other object: an arbitrary pickle can run code when loaded."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR pickle") from None


def _unpickle(content: bytes, display: str) -> Any:
    try:
        # latin1: the official files are Python 2 pickles (numpy's documented choice for them).
        return _CifarUnpickler(io.BytesIO(content), encoding="latin1").load()
    except Exception as error:
        raise DataError(
            f"{display}: not a readable CIFAR pickle ({type(error).__name__}: {error}); the file "
            "is truncated, corrupt or not a CIFAR file. Delete it and extract or download the dataset again."
        ) from None


def _check_class_names(meta: Any, layout: CifarLayout, display: str) -> list[str]:
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DataError(
            f"{display}: not a {layout.title} meta file (no list of class names under '{layout.names_key}')"
        )
    if tuple(names) != layout.class_names:
        if len(names) != len(layout.class_names):
            detail = f"{len(names)} classes instead of {len(layout.class_names)}"
        else:
            index = next(i for i, (got, want) in enumerate(zip(names, layout.class_names)) if got != want)
            detail = f"class {index} is {names[index]!r}, officially {layout.class_names[index]!r}"
        raise DataError(f"{display}: class names differ from the official {layout.title} list ({detail})")
    return list(names)


def _batch_arrays(batch: Any, display: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 32 x 32 x 3 view) and int64 labels of one CIFAR batch, checked."""
    if not isinstance(batch, dict) or "data" not in batch:
        raise DataError(f"{display}: not a CIFAR batch (expected a dict with 'data' and labels)")
    # torchvision's rule: CIFAR-10 batches have "labels", CIFAR-100 "fine_labels".
    label_key = "labels" if "labels" in batch else "fine_labels"
    data = batch["data"]
    pixels = CIFAR_IMAGE_SIZE * CIFAR_IMAGE_SIZE * 3
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{display}: images are a {found}; expected uint8 N x {pixels} "
            f"({CIFAR_IMAGE_SIZE}x{CIFAR_IMAGE_SIZE} RGB, channel-major)"
        )
    if label_key not in batch:
        raise DataError(f"{display}: no labels (neither 'labels' nor 'fine_labels')")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{display}: labels must be a list of integers, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(data):
        raise DataError(f"{display}: {len(data)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"{display}: label {labels[bad[0]]} (image {bad[0]}) is out of range 0..{num_classes - 1} "
            f"({len(bad)} bad label(s))"
        )
    images = data.reshape(-1, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _check_balance(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every official CIFAR split has the same number of images per class; a file that is
    missing or duplicated breaks that."""
    counts = np.bincount(labels, minlength=num_classes)
    if len(labels) == 0 or counts.min() != counts.max():
        raise DataError(
            f"{where}: not balanced across classes ({counts.min()} to {counts.max()} images per "
            f"class, {len(labels)} in all); the files are incomplete or mixed up"
        )


def fingerprint_arrays(class_names: list[str], splits: dict[str, ImageArrays]) -> str:
    """sha256 of class names, pixels and labels: equal for equal content, whatever the file bytes."""
    digest = hashlib.sha256(json.dumps(class_names).encode())
    for split, arrays in splits.items():
        images = np.ascontiguousarray(arrays.images)
        digest.update(f"{split}:{images.shape}".encode())
        digest.update(images.data.cast("B"))  # ndarray.data: the array's memoryview
        digest.update(np.ascontiguousarray(arrays.labels, dtype="<i8").tobytes())
    return f"sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------- ImageNet


def _imagenet_class_names(folders: list[str]) -> list[str]:
    """Readable names for the 1000 ImageNet wnid folders (torchvision's list, which is in
    sorted-wnid order); the folder names otherwise."""
    if len(folders) == 1000 and all(len(f) == 9 and f[0] == "n" and f[1:].isdigit() for f in folders):
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return list(folders)


def read_image_folders(root: str | Path) -> RawDataset:
    """ImageNet-style ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` under ``root/imagenet``
    or ``root``. Files are listed here and decoded only when the .beton is written."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    candidates = [root / "imagenet", root]
    base = next((c for c in candidates if (c / "train").is_dir() and (c / "val").is_dir()), None)
    if base is None:
        looked = " and ".join(f"{c}/train/ + {c}/val/" for c in candidates)
        raise DataError(
            f"ImageNet not found: looked for {looked}. ImageNet cannot be downloaded automatically; "
            "get it from https://image-net.org, lay it out as train/<class>/*.JPEG and "
            f"val/<class>/*.JPEG under {root}, or set ${DATA_ROOT_ENV} or data.root to its folder."
        )
    try:
        folders, class_to_index = find_classes(str(base / "train"))
        val_folders, _ = find_classes(str(base / "val"))
    except FileNotFoundError as error:
        raise DataError(f"{base}: {error}") from None
    if val_folders != folders:
        only = sorted(set(folders) ^ set(val_folders))[:5]
        raise DataError(f"{base}: train/ and val/ have different class folders (e.g. {', '.join(only)})")
    sets, digest = {}, hashlib.sha256(json.dumps(folders).encode())
    for split, folder in (("train", base / "train"), ("test", base / "val")):
        try:
            samples = make_dataset(str(folder), class_to_index, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as error:  # a class folder without images
            raise DataError(f"{folder}: {error}") from None
        paths = [path for path, _ in samples]
        for path in paths:
            digest.update(f"{os.path.relpath(path, base)}\0{os.path.getsize(path)}\n".encode())
        sets[split] = ImageFiles(paths, np.array([label for _, label in samples], dtype=np.int64))
    return RawDataset(
        "imagenet",
        _imagenet_class_names(folders),
        sets["train"],
        sets["test"],
        str(base),
        f"sha256:{digest.hexdigest()}",
    )


# --------------------------------------------------------------------------- synthetic


def make_synthetic(config: Config) -> RawDataset:
    """Seeded random images: each class has a blocky colour pattern, and every image is the
    average of its class pattern and uniform noise (learnable, but not trivially)."""
    spec = config.data.synthetic
    seed = config.data.split_seed  # the data, like the splits, is independent of the run's seed
    rng = np.random.default_rng(seed)
    size = spec.image_size
    patterns = rng.integers(0, 256, (spec.num_classes, 4, 4, 3), dtype=np.uint16)
    blocks = np.arange(size) * 4 // size  # which of the 4x4 pattern cells each pixel shows
    patterns = patterns[:, blocks][:, :, blocks]

    def make(count: int) -> ImageArrays:
        labels = rng.permutation(np.arange(count) % spec.num_classes).astype(np.int64)
        noise = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint16)
        return ImageArrays(((patterns[labels] + noise) // 2).astype(np.uint8), labels)

    train, test = make(spec.num_train), make(spec.num_test)
    class_names = [f"class_{index:03d}" for index in range(spec.num_classes)]
    location = (
        f"synthetic (seed {seed}, {spec.num_train}+{spec.num_test} images of {size}x{size}, {spec.num_classes} classes)"
    )
    return RawDataset(
        "synthetic", class_names, train, test, location, fingerprint_arrays(class_names, {"train": train, "test": test})
    )
