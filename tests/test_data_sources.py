"""Raw dataset readers and stratified splits: the real CIFAR-100, small CIFAR-10 and
ImageNet-layout data in the real on-disk formats, synthetic data, and bad input."""

from __future__ import annotations

import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from eed.config import load_config
from eed.data import DataError
from eed.data.catalog import CIFAR100_CLASSES, CIFAR100_NORMALIZATION
from eed.data.sources import ImageFiles, make_synthetic, read_cifar, read_image_folders
from eed.data.splits import per_class_quota, split_off, stratified_sample


@pytest.fixture(scope="module")
def cifar100(cifar100_root):
    return read_cifar("cifar100", cifar100_root, download=False)


# --------------------------------------------------------------------------- real CIFAR-100


@pytest.mark.slow
def test_real_cifar100_has_the_official_counts_classes_and_statistics(cifar100):
    assert cifar100.class_names == list(CIFAR100_CLASSES)
    assert cifar100.train.images.shape == (50_000, 32, 32, 3) and cifar100.train.images.dtype == np.uint8
    assert cifar100.test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(cifar100.train.labels).tolist() == [500] * 100
    assert np.bincount(cifar100.test.labels).tolist() == [100] * 100
    # Channel means over all 50,000 training images, through the project's reader.
    pixels = cifar100.train.images.reshape(-1, 3)
    mean = pixels.sum(axis=0, dtype=np.int64) / len(pixels) / 255
    np.testing.assert_allclose(mean, CIFAR100_NORMALIZATION.mean, atol=1e-3)
    std = np.sqrt((pixels.astype(np.float64) ** 2).mean(axis=0) / 255**2 - mean**2)
    np.testing.assert_allclose(std, CIFAR100_NORMALIZATION.std, atol=1e-3)
    assert cifar100.fingerprint.startswith("sha256:")


@pytest.mark.slow
def test_default_validation_split_of_real_cifar100_is_stratified(cifar100):
    kept, taken = split_off(cifar100.train.labels, 5000, seed=0)
    assert (len(kept), len(taken)) == (45_000, 5_000)
    assert np.bincount(cifar100.train.labels[kept]).tolist() == [450] * 100
    assert np.bincount(cifar100.train.labels[taken]).tolist() == [50] * 100
    assert len(np.intersect1d(kept, taken)) == 0
    np.testing.assert_array_equal(split_off(cifar100.train.labels, 5000, seed=0)[1], taken)
    assert not np.array_equal(split_off(cifar100.train.labels, 5000, seed=1)[1], taken)


@pytest.mark.slow
def test_reading_the_archive_equals_reading_the_extracted_folder(cifar100, tmp_path):
    """Members are read straight from the .tar.gz (nothing extracted into the root)."""
    archive = Path("/work/shared/data/cifar-100-python.tar.gz")
    if not archive.is_file():
        pytest.fail(f"{archive} is missing")
    (tmp_path / archive.name).symlink_to(archive)
    from_archive = read_cifar("cifar100", tmp_path, download=False)
    assert from_archive.fingerprint == cifar100.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


# --------------------------------------------------------------------------- small CIFAR-10


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
def test_small_cifar10_in_the_official_format_reads_back_exactly(tmp_path, make_cifar10, archive):
    arrays = make_cifar10(tmp_path, per_class_train=7, per_class_test=3, archive=archive)
    dataset = read_cifar("cifar10", tmp_path, download=False)
    np.testing.assert_array_equal(dataset.train.images, arrays["train_images"])
    np.testing.assert_array_equal(dataset.train.labels, arrays["train_labels"])
    np.testing.assert_array_equal(dataset.test.images, arrays["test_images"])
    assert dataset.class_names[0] == "airplane" and dataset.num_classes == 10
    image, label = dataset.train[3]
    assert image.shape == (32, 32, 3) and label == arrays["train_labels"][3]


def test_fingerprint_depends_on_pixels_not_on_file_bytes(tmp_path, make_cifar10):
    make_cifar10(tmp_path / "a", seed=1)
    make_cifar10(tmp_path / "b", seed=1, archive=True)
    make_cifar10(tmp_path / "c", seed=2)
    fingerprints = [read_cifar("cifar10", tmp_path / name, download=False).fingerprint for name in "abc"]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


# --------------------------------------------------------------------------- ImageNet layout and synthetic


def test_imagenet_folders_are_listed_with_val_as_test(tmp_path, make_image_folders):
    names = make_image_folders(tmp_path / "imagenet", classes=3, train_per_class=4, val_per_class=2)
    dataset = read_image_folders(tmp_path)  # <root>/imagenet/ is found
    assert dataset.class_names == names
    assert isinstance(dataset.train, ImageFiles) and len(dataset.train) == 12 and len(dataset.test) == 6
    assert np.bincount(dataset.train.labels).tolist() == [4, 4, 4]
    image, label = dataset.test[5]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and label == 2
    assert read_image_folders(tmp_path / "imagenet").fingerprint == dataset.fingerprint


def test_synthetic_data_is_seeded_by_split_seed_and_has_any_size(tmp_path):
    def config(*extra):
        return load_config(
            None,
            [
                "data.dataset=synthetic",
                "data.synthetic.num_train=50",
                "data.synthetic.num_test=20",
                "data.synthetic.num_classes=5",
                "data.synthetic.image_size=12",
                *extra,
            ],
        )

    first, again, other = (
        make_synthetic(config()),
        make_synthetic(config("seed=7")),
        make_synthetic(config("data.split_seed=1")),
    )
    assert first.train.images.shape == (50, 12, 12, 3) and first.num_classes == 5
    assert np.bincount(first.train.labels).tolist() == [10] * 5
    assert first.fingerprint == again.fingerprint  # the run's seed does not change the data
    assert first.fingerprint != other.fingerprint


def test_stratified_sample_keeps_class_proportions_and_sums_exactly():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    quota = per_class_quota(np.array([50, 30, 20]), 7)
    assert quota.sum() == 7 and quota.tolist() == [4, 2, 1]
    sample = stratified_sample(labels, 10, seed=3, purpose="train_subset")
    assert np.bincount(labels[sample]).tolist() == [5, 3, 2] and np.all(np.diff(sample) > 0)
    assert not np.array_equal(sample, stratified_sample(labels, 10, seed=3, purpose="val_split"))
    assert len(stratified_sample(labels, 0, seed=0, purpose="val_split")) == 0


# --------------------------------------------------------------------------- bad input


def test_missing_cifar_offline_names_the_places_looked_and_how_to_provide_it(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    monkeypatch.delenv("EED_DATA_ROOT", raising=False)
    root = tmp_path / "raw"
    with pytest.raises(DataError) as error:
        read_cifar("cifar100", root)
    message = str(error.value)
    assert str(root / "cifar-100-python") in message and str(root / "cifar-100-python.tar.gz") in message
    assert "EED_DATA_ROOT" in message and "data.root" in message and "name resolution" in message
    assert not root.exists()  # nothing left behind


def test_truncated_archive_is_a_clear_error(tmp_path, make_cifar10):
    make_cifar10(tmp_path, archive=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as error:
        read_cifar("cifar10", tmp_path, download=False)
    assert str(archive) in str(error.value)


def test_garbage_archive_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"this is not a tar.gz file" * 100)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: cannot read the archive"):
        read_cifar("cifar10", tmp_path, download=False)


def test_truncated_pickle_names_the_file(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR pickle"):
        read_cifar("cifar10", tmp_path, download=False)


def test_pickle_with_foreign_objects_is_refused(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Path("/etc/passwd")}))
    with pytest.raises(DataError, match=r"test_batch: .*refusing to load pathlib"):
        read_cifar("cifar10", tmp_path, download=False)


def _rewrite_batch(path: Path, **changes) -> None:
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_wrong_image_shape_names_the_file(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    _rewrite_batch(path, data=batch["data"][:, :3000])
    with pytest.raises(DataError, match=r"data_batch_2: images are a uint8 array of shape \(\d+, 3000\)"):
        read_cifar("cifar10", tmp_path, download=False)


def test_label_out_of_range_names_the_file(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    labels = pickle.loads(path.read_bytes(), encoding="latin1")["labels"]
    _rewrite_batch(path, labels=[10, *labels[1:]])
    with pytest.raises(DataError, match=r"test_batch: label 10 \(image 0\) is out of range 0..9"):
        read_cifar("cifar10", tmp_path, download=False)


def test_missing_batch_and_unbalanced_classes_are_errors(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="incomplete: data_batch_5 missing"):
        read_cifar("cifar10", tmp_path, download=False)
    make_cifar10(tmp_path)
    path = folder / "data_batch_1"
    labels = pickle.loads(path.read_bytes(), encoding="latin1")["labels"]
    _rewrite_batch(path, labels=[0] * len(labels))
    with pytest.raises(DataError, match="not balanced across classes"):
        read_cifar("cifar10", tmp_path, download=False)


def test_wrong_class_names_are_an_error(tmp_path, make_cifar10):
    make_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    names = pickle.loads(meta.read_bytes(), encoding="latin1")["label_names"]
    _rewrite_batch(meta, label_names=names[1:] + names[:1])
    with pytest.raises(DataError, match="class 0 is 'automobile', officially 'airplane'"):
        read_cifar("cifar10", tmp_path, download=False)


def test_missing_imagenet_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="ImageNet not found: looked for .*imagenet/train/"):
        read_image_folders(tmp_path)


def test_archive_member_paths_cannot_escape(tmp_path, make_cifar10):
    """Members are read by exact name, never extracted: an archive with other paths is
    rejected as not being a CIFAR archive."""
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(DataError, match="not a cifar-10-batches-py archive"):
        read_cifar("cifar10", tmp_path, download=False)
    assert not (tmp_path.parent / "evil").exists()
