"""The manifest: a JSON file beside the ``.beton`` files that says what they hold.

``eed prepare`` writes it last, after every ``.beton`` is complete, and deletes the old
one before it starts writing: a folder with a manifest is a finished preparation. Later
stages call :func:`load_manifest`, which checks that the prepared data was made with the
current params (dataset, split_seed, val_size, image settings) and that its files are all there
with their recorded sizes. A split's file is handed out by :meth:`Manifest.split_path`, the one
way loaders and readers reach it, which (``data.verify: sha256``, the default) first checks its
sha256 against the manifest: same-size corruption never trains or evaluates silently. Each file
is hashed once per process (cached by path, size and modification time).

Layout of a prepared dataset: ``<data.prepared_dir>/<dataset>/{train,val,test}.beton``
and ``manifest.json`` (no ``val.beton`` when ``val_size`` is 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eed.config import Config
from eed.data.catalog import dataset_info
from eed.errors import DataError
from eed.paths import in_workspace

MANIFEST_NAME = "manifest.json"
FORMAT = "eed-prepared-data"
# Bump when the .beton layout or the split procedure changes: older preparations then
# no longer match and `eed prepare` rewrites them.
FORMAT_VERSION = 1
RERUN_HINT = "re-run `eed prepare` (or `dvc repro prepare`)"


def dataset_dir(config: Config) -> Path:
    """Folder of the prepared files of the configured dataset; a relative ``data.prepared_dir``
    is taken from the project folder (in a DVC temporary copy: the copy, where the stage's outputs are)."""
    return in_workspace(config.data.prepared_dir) / config.data.dataset


def image_field_settings(config: Config) -> dict[str, Any]:
    """How images are stored in the .beton (the arguments of FFCV's ``RGBImageField``)."""
    if dataset_info(config.data.dataset).write_mode == "jpg":
        return {
            "write_mode": "jpg",
            "max_resolution": config.data.max_resolution,
            "jpeg_quality": config.data.jpeg_quality,
        }
    return {"write_mode": "raw", "max_resolution": None, "jpeg_quality": None}


def expected_params(config: Config) -> dict[str, Any]:
    """The params a preparation depends on, as ``{"data.val_size": 5000, ...}``.

    Loaders refuse prepared data whose recorded params differ from these.
    """
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "data.dataset": config.data.dataset,
        "data.split_seed": config.data.split_seed,
        "data.val_size": config.data.val_size,
    }
    if config.data.dataset == "imagenet":
        params["data.max_resolution"] = config.data.max_resolution
        params["data.jpeg_quality"] = config.data.jpeg_quality
    if config.data.dataset == "synthetic":
        params.update({f"data.synthetic.{key}": value for key, value in config.data.synthetic.model_dump().items()})
    return params


@dataclass
class SplitRecord:
    file: str  # name of the .beton, relative to the manifest
    num_samples: int
    class_counts: list[int]
    bytes: int = 0
    sha256: str = ""


@dataclass
class Manifest:
    dataset: str
    class_names: list[str]
    params: dict[str, Any]  # expected_params() of the config it was prepared with
    source: dict[str, str]  # {"location": ..., "fingerprint": "sha256:..."}
    fields: dict[str, dict[str, Any]]  # FFCV field settings, per field name
    normalization: dict[str, list[float]]  # {"mean": [...], "std": [...]} the loaders apply
    image_shape: list[int] | None  # [H, W, 3] when all images share it (raw), else None
    splits: dict[str, SplitRecord]
    split_seed: int  # seed of the validation split (and of synthetic images)
    val_size: int
    eed_version: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    # Set when read from disk: the folder holding the manifest and the .beton files.
    directory: Path | None = field(default=None, compare=False)
    # Set by load_manifest (data.verify): "sha256" makes split_path check a file's hash first.
    verify: str | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_path(self, split: str) -> Path:
        if split not in self.splits:
            if split == "val":
                raise DataError(
                    f"no validation split was prepared (data.val_size = {self.val_size}); "
                    "use the test split, or set data.val_size > 0 and " + RERUN_HINT
                )
            raise DataError(f"unknown split {split!r}; prepared: {', '.join(self.splits)}")
        assert self.directory is not None, "split_path needs a manifest read from disk"
        record = self.splits[split]
        path = self.directory / record.file
        if self.verify == "sha256" and record.sha256:
            if not path.is_file():
                raise DataError(f"{path} is missing (the {split} split of {MANIFEST_NAME}); {RERUN_HINT}")
            if file_sha256(path) != record.sha256:
                raise DataError(
                    f"{path} is corrupt: its sha256 differs from the one {MANIFEST_NAME} recorded "
                    f"when it was prepared (the {split} split); {RERUN_HINT}"
                )
        return path

    def inconsistency(self) -> str | None:
        """What in the manifest contradicts the rest of it (class names against per-class counts,
        counts against sizes), or None."""
        names = self.class_names
        if not names or len(set(names)) != len(names):
            return f"its class names are empty or repeat ({len(names)} names, {len(set(names))} distinct)"
        for split, record in self.splits.items():
            if len(record.class_counts) != len(names):
                return f"{len(names)} class names but {len(record.class_counts)} class counts in the {split} split"
            if sum(record.class_counts) != record.num_samples or min(record.class_counts, default=0) < 0:
                return (
                    f"the {split} split's class counts sum to {sum(record.class_counts)}, "
                    f"not its {record.num_samples} samples"
                )
        return None

    def check_labels(self, split: str, labels: np.ndarray) -> None:
        """The labels a .beton holds against the manifest's classes: a label past the last class
        would fail deep inside the loss (an IndexError) after a checkpoint was written."""
        path = (self.directory or Path(".")) / MANIFEST_NAME
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"{path}: the {split} split holds labels up to {labels.max()} (from {labels.min()}), but "
                f"the manifest names {self.num_classes} classes; {RERUN_HINT}"
            )
        counts = np.bincount(labels, minlength=self.num_classes).tolist() if len(labels) else []
        if split in self.splits and counts != self.splits[split].class_counts:
            raise DataError(f"{path}: the {split} split's labels do not match its class counts; {RERUN_HINT}")

    def same_content(self, other: Manifest) -> bool:
        """Equal in what matters for the data: ignores the written files' sizes and hashes,
        where the source was read from (moving the data root changes nothing) and the eed
        version (FORMAT_VERSION marks layout changes)."""

        def strip(manifest: Manifest) -> dict[str, Any]:
            data = manifest.to_json()
            del data["eed_version"]
            del data["source"]["location"]
            for record in data["splits"].values():
                del record["bytes"]
                del record["sha256"]
            return data

        return strip(self) == strip(other)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        data.pop("verify")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: Path | None = None) -> Manifest:
        data = dict(data)
        data["splits"] = {name: SplitRecord(**record) for name, record in data["splits"].items()}
        return cls(**data, directory=directory)


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def file_sha256(path: str | Path) -> str:
    """``sha256:<hex>`` of a file, as the manifest records it; computed once per process for the
    same file (path, size, modification time, inode), so a run's several loaders hash it once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(path)
    return _DIGESTS[key]


def read_manifest(directory: str | Path) -> Manifest | None:
    """The manifest in ``directory``, or None when there is none (not prepared, or interrupted)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        manifest = Manifest.from_json(data, directory=Path(directory))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise DataError(f"{path}: not a valid manifest ({error}); {RERUN_HINT}") from None
    problem = manifest.inconsistency()
    if problem:
        raise DataError(f"{path} contradicts itself: {problem}; {RERUN_HINT}")
    return manifest


def default_file_mode() -> int:
    """0666 minus the umask: the mode ``open()`` would give a new file (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write atomically (temporary file, then rename)."""
    path = Path(directory) / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest.to_json(), handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def params_mismatch(manifest: Manifest, config: Config) -> list[str]:
    """``["data.val_size: prepared with 5000, params say 1000", ...]``; empty when they match."""
    expected = expected_params(config)
    return [
        f"{key}: prepared with {manifest.params.get(key)!r}, params say {expected.get(key)!r}"
        for key in sorted(set(expected) | set(manifest.params))
        if manifest.params.get(key) != expected.get(key)
    ]


def load_manifest(config: Config) -> Manifest:
    """The manifest of the configured dataset, checked against the params and the files.

    Raises :class:`DataError` telling to re-run ``eed prepare`` when the data is missing,
    was prepared with other params, or a ``.beton`` file is missing or has another size.
    With ``data.verify: sha256`` its :meth:`~Manifest.split_path` also checks the file's hash.
    """
    directory = dataset_dir(config)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"no prepared {config.data.dataset} data in {directory} (no {MANIFEST_NAME}); {RERUN_HINT}")
    differences = params_mismatch(manifest, config)
    if differences:
        raise DataError(
            f"the prepared data in {directory} does not match the params ({'; '.join(differences)}); {RERUN_HINT}"
        )
    for split, record in manifest.splits.items():
        path = directory / record.file
        if not path.is_file() or path.stat().st_size != record.bytes:
            state = "is missing" if not path.is_file() else f"has {path.stat().st_size} bytes, not {record.bytes}"
            raise DataError(f"{path} {state} (the {split} split of {MANIFEST_NAME}); {RERUN_HINT}")
    manifest.verify = config.data.verify
    return manifest


def num_classes(config: Config) -> int:
    return load_manifest(config).num_classes


def class_names(config: Config) -> list[str]:
    return list(load_manifest(config).class_names)
