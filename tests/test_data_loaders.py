"""Loaders of both backends on the real CIFAR-100 (round trip, augmentation, order, epochs,
reproducibility), DDP sharding, train subsets, small CIFAR-10 and ImageNet-layout data.

FFCV compiles each new pipeline on its first batch (~10 s with augmentation), so the FFCV
training loader is built once per module.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from rich.console import Console

from eed.config import load_config
from eed.data import DataError, make_loader, prepare, read_split
from eed.data.augment import Normalizer, draw_translate_flip, translate_flip
from eed.data.catalog import CIFAR100_NORMALIZATION, dataset_info
from eed.data.loaders import FFCVEpochLoader, TensorEpochLoader, _ffcv_pipelines
from eed.data.sources import read_cifar

pytestmark = pytest.mark.slow
BATCH = 256


def cifar_config(prepared_dir, *extra: str):
    return load_config(
        None,
        [
            f"data.prepared_dir={prepared_dir}",
            "data.train_subset=0",
            f"train.batch_size={BATCH}",
            "data.num_workers=2",
            "train.device=cpu",
            *extra,
        ],
    )


def ffcv_table(mean, std) -> torch.Tensor:
    """FFCV NormalizeImage's lookup table, 3 x 256: computed in float64, stored as float32."""
    table = (np.arange(256)[:, None] - np.array(mean) * 255) / (np.array(std) * 255)
    return torch.from_numpy(table.astype(np.float32).T.copy())


def ffcv_normalize(pixels: torch.Tensor, mean=CIFAR100_NORMALIZATION.mean, std=CIFAR100_NORMALIZATION.std):
    table = ffcv_table(mean, std)
    return table[torch.arange(3).view(1, 3, 1, 1), pixels.long()]


def torch_normalize(pixels: torch.Tensor, mean=CIFAR100_NORMALIZATION.mean, std=CIFAR100_NORMALIZATION.std):
    mean = torch.tensor(np.array(mean) * 255, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(np.array(std) * 255, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.float() - mean) / std


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Invert either normalization to uint8 (nearest table entry per channel)."""
    table = ffcv_table(CIFAR100_NORMALIZATION.mean, CIFAR100_NORMALIZATION.std)
    pixels = torch.stack(
        [torch.bucketize(images[:, c].contiguous(), (table[c, 1:] + table[c, :-1]) / 2) for c in range(3)], 1
    )
    return pixels.to(torch.uint8)


def matching_variants(output: torch.Tensor, source: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """B x (2p+1) x (2p+1) x 2 booleans: which translate/flip variants of each source image
    equal the output image (all 162 variants built at once, 16 images at a time)."""
    size = 2 * padding + 1
    grid = torch.meshgrid(torch.arange(size), torch.arange(size), torch.arange(2), indexing="ij")
    shift_y, shift_x, flip = (part.flatten() for part in grid)
    count = len(shift_y)
    matches = []
    for chunk_out, chunk_src in zip(output.split(16), source.split(16)):
        chunk = len(chunk_src)
        variants = translate_flip(
            chunk_src.repeat_interleave(count, 0),
            shift_y.repeat(chunk),
            shift_x.repeat(chunk),
            flip.bool().repeat(chunk),
            padding,
        )
        matches.append((variants.view(chunk, count, -1) == chunk_out.reshape(chunk, 1, -1)).all(-1))
    return torch.cat(matches).view(len(source), size, size, 2)


@pytest.fixture(scope="module")
def cifar100_test_raw(cifar100_root):
    raw = read_cifar("cifar100", cifar100_root, download=False).test
    return torch.from_numpy(raw.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(raw.labels)


@pytest.fixture(scope="module")
def train_pixels(cifar100_prepared):
    return read_split(cifar_config(cifar100_prepared), "train")


@pytest.fixture(scope="module")
def ffcv_train_loader(cifar100_prepared):
    loader = make_loader(cifar_config(cifar100_prepared), "train", train=True, device="cpu")
    loader.warmup(show_status=False)
    return loader


# --------------------------------------------------------------------------- round trip, no augmentation


def test_read_split_returns_the_raw_pixels(cifar100_prepared, cifar100_root, cifar100_test_raw, train_pixels):
    test = read_split(cifar_config(cifar100_prepared), "test")
    assert test.images.dtype == torch.uint8 and test.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(test.images, cifar100_test_raw[0]) and torch.equal(test.labels, cifar100_test_raw[1])
    assert len(train_pixels) == 45_000 and train_pixels.class_names[0] == "apple"
    subset = read_split(cifar100_prepared / "cifar100", "val", indices=[4, 0, 4999])
    whole = read_split(cifar100_prepared / "cifar100", "val")
    assert torch.equal(subset.images, whole.images[[4, 0, 4999]])


def test_ffcv_eval_loader_is_bit_exact_on_the_whole_test_split(cifar100_prepared, cifar100_test_raw):
    loader = make_loader(cifar_config(cifar100_prepared), "test", train=False, device="cpu")
    assert (len(loader), loader.num_samples, loader.drop_last) == (40, 10_000, False)
    # FFCV reuses its buffers every few batches; the loader's batches are copies, safe to keep.
    batches = list(loader)
    assert [len(labels) for _, labels in batches][-1] == 10_000 - 39 * BATCH  # the last, partial batch is kept
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and images.is_contiguous()
    raw_images, raw_labels = cifar100_test_raw
    assert torch.equal(labels, raw_labels)  # sequential order, labels kept across batches intact
    assert torch.equal(images, ffcv_normalize(raw_images))
    assert abs(images.mean().item()) < 0.03 and abs(images.std().item() - 1) < 0.03


def test_tensor_eval_loader_is_bit_exact_and_agrees_with_ffcv(cifar100_prepared, cifar100_test_raw):
    loader = make_loader(cifar_config(cifar100_prepared, "data.backend=tensor"), "test", train=False)
    assert (len(loader), loader.num_samples, loader.drop_last) == (40, 10_000, False)
    images = torch.cat([images for images, _ in loader])
    labels = torch.cat([labels for _, labels in loader])
    raw_images, raw_labels = cifar100_test_raw
    assert torch.equal(labels, raw_labels)
    assert torch.equal(images, torch_normalize(raw_images))
    torch.testing.assert_close(images, ffcv_normalize(raw_images), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- training batches


def check_augmented(images, labels, source_ids, train_pixels):
    """Shapes, dtypes, exactly one of FFCV's translate/flip variants per image, and that
    flips and translations both happen."""
    assert images.shape == (len(labels), 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(labels, train_pixels.labels[source_ids])
    pixels = to_pixels(images)
    renormalized = ffcv_normalize(pixels)
    torch.testing.assert_close(renormalized, images, atol=1e-6, rtol=0)  # every value is a normalized pixel
    checked = slice(0, 64)  # enough for the statistics below, and cheap
    matches = matching_variants(pixels[checked], train_pixels.images[source_ids[checked]])
    assert matches.flatten(1).any(1).all(), "an image is no translate/flip variant of its source"
    identity = matches[:, 4, 4, 0]
    assert identity.float().mean() < 0.1, "most images are unchanged: no augmentation"
    only_flipped = matches[..., 1].flatten(1).any(1) & ~matches[..., 0].flatten(1).any(1)
    only_unflipped = matches[..., 0].flatten(1).any(1) & ~matches[..., 1].flatten(1).any(1)
    assert 0.3 < only_flipped.float().mean() < 0.7 and 0.3 < only_unflipped.float().mean() < 0.7
    shifts = {tuple(np.argwhere(m.numpy())[0][:2]) for m in matches if m.sum() == 1}
    assert len(shifts) > 20, "translations do not vary"
    return images.mean().item(), images.std().item()


def test_ffcv_training_batches_are_translated_and_flipped_copies(ffcv_train_loader, train_pixels):
    loader = ffcv_train_loader
    assert (len(loader), loader.num_samples, loader.drop_last, loader.num_classes) == (175, 45_000, True, 100)
    loader.set_epoch(0)
    order = loader.epoch_order(0)
    assert sorted(order.tolist()) == list(range(45_000))
    batches = []
    for index, batch in enumerate(loader):
        batches.append(batch)
        if index == 7:
            break
    assert loader.epoch == 1
    # Labels kept from eight batches are still right: the loader clones them.
    kept_labels = torch.cat([labels for _, labels in batches])
    assert torch.equal(kept_labels, train_pixels.labels[order[: 8 * BATCH]])
    mean, std = check_augmented(*batches[-1], order[7 * BATCH : 8 * BATCH], train_pixels)
    # Zero padding shifts the statistics a little below 0 / above 1.
    assert -0.4 < mean < 0.0 and 0.95 < std < 1.25


def test_tensor_training_batches_have_the_same_semantics_and_statistics(
    cifar100_prepared, ffcv_train_loader, train_pixels
):
    loader = make_loader(cifar_config(cifar100_prepared, "data.backend=tensor"), "train", train=True)
    assert (len(loader), loader.num_samples, loader.drop_last) == (175, 45_000, True)
    # Same sample order as FFCV for the same seed and epoch.
    for epoch in (0, 3):
        np.testing.assert_array_equal(loader.epoch_order(epoch), ffcv_train_loader.epoch_order(epoch))
    stats = []
    for index, (images, labels) in enumerate(loader):
        stats.append(
            check_augmented(images, labels, loader.epoch_order(0)[index * BATCH : (index + 1) * BATCH], train_pixels)
        )
        if index == 2:
            break
    ffcv_stats = []
    ffcv_train_loader.set_epoch(0)
    for index, (images, _) in enumerate(ffcv_train_loader):
        ffcv_stats.append((images.mean().item(), images.std().item()))
        if index == 2:
            break
    np.testing.assert_allclose(np.mean(stats, 0), np.mean(ffcv_stats, 0), atol=0.05)


def test_tensor_backend_is_bit_reproducible_per_seed_and_epoch(cifar100_prepared):
    def first_batches(*extra, epoch=0, count=2):
        loader = make_loader(cifar_config(cifar100_prepared, "data.backend=tensor", *extra), "train", train=True)
        loader.set_epoch(epoch)
        batches = []
        for images, labels in loader:
            batches.append((images, labels))
            if len(batches) == count:
                break
        return batches

    reference = first_batches()
    again = first_batches()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, again))
    other_seed = first_batches("seed=1")
    other_epoch = first_batches(epoch=1)
    assert not torch.equal(reference[0][1], other_seed[0][1]) and not torch.equal(reference[0][1], other_epoch[0][1])
    # Same images in another epoch are augmented differently.
    loader = make_loader(
        cifar_config(cifar100_prepared, "data.backend=tensor", "data.train_subset=256"), "train", train=True
    )
    first = {tuple(loader.epoch_order(0))[i]: image for i, image in enumerate(next(iter(loader))[0])}
    second = {tuple(loader.epoch_order(1))[i]: image for i, image in enumerate(next(iter(loader))[0])}
    assert sum(not torch.equal(first[key], second[key]) for key in first) > 200


def test_resuming_continues_the_same_sequence(cifar100_prepared):
    config = cifar_config(cifar100_prepared, "data.backend=tensor", "data.train_subset=1024")
    uninterrupted = make_loader(config, "train", train=True)
    epochs = [[labels for _, labels in uninterrupted] for _ in range(3)]
    assert uninterrupted.epoch == 3
    resumed = make_loader(config, "train", train=True)
    resumed.set_epoch(2)
    images_resumed = [images for images, _ in resumed]
    uninterrupted.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(images_resumed, [images for images, _ in uninterrupted]))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))
    also = make_loader(config, "train", train=True, epoch=2)  # the epoch argument does the same
    assert torch.equal(next(iter(also))[1], epochs[2][0])


def test_ffcv_warmup_set_epoch_and_early_exit(ffcv_train_loader, train_pixels):
    loader = ffcv_train_loader
    loader.set_epoch(5)
    loader.warmup(console=Console(file=io.StringIO()))
    assert loader.epoch == 5
    for _, labels in loader:
        assert torch.equal(labels, train_pixels.labels[loader.epoch_order(5)[:BATCH]])
        break
    assert not [t for t in threading.enumerate() if type(t).__name__ == "EpochIterator" and t.is_alive()]
    assert loader.epoch == 6
    assert sum(1 for _ in loader) == len(loader)  # a full epoch after an abandoned one


def test_train_subset_is_stratified_and_shared_by_both_backends(cifar100_prepared, ffcv_train_loader, train_pixels):
    config = cifar_config(cifar100_prepared, "data.backend=tensor", "data.train_subset=3000")
    loader = make_loader(config, "train", train=True)
    assert loader.num_samples == 3000 and len(loader) == 3000 // BATCH
    ids = loader.epoch_order(0)
    assert np.bincount(train_pixels.labels[ids].numpy(), minlength=100).tolist() == [30] * 100
    other = make_loader(
        cifar_config(cifar100_prepared, "data.backend=tensor", "data.train_subset=3000", "seed=4"), "train", train=True
    )
    assert set(other.epoch_order(0)) == set(ids)  # the subset follows data.split_seed, not the run's seed
    eval_loader = make_loader(config, "train", train=False)  # the subset also applies to evaluation on train
    np.testing.assert_array_equal(eval_loader.epoch_order(0), np.sort(ids))


# --------------------------------------------------------------------------- DDP


def test_tensor_backend_shards_like_distributed_sampler():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).contiguous()
    labels = torch.arange(10)
    normalizer = Normalizer(CIFAR100_NORMALIZATION)
    shards = [
        TensorEpochLoader(
            images,
            labels,
            np.arange(10),
            batch_size=2,
            train=True,
            seed=3,
            epoch=1,
            normalizer=normalizer,
            class_names=["a"] * 10,
            rank=rank,
            world_size=3,
            distributed=True,
            padding=1,
        )
        for rank in range(3)
    ]
    orders = [shard.epoch_order(1) for shard in shards]
    assert [len(order) for order in orders] == [4, 4, 4] and [len(shard) for shard in shards] == [2, 2, 2]
    assert set(np.concatenate(orders)) == set(range(10))  # 12 slots: two samples repeat, as in PyTorch
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(1)
    assert orders[1].tolist() == list(sampler)
    seen = torch.cat([labels for shard in shards for _, labels in shard])
    assert len(seen) == 12 and set(seen.tolist()) == set(range(10))


def test_distributed_loaders_under_a_process_group(cifar100_prepared, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for backend in ("tensor", "ffcv"):
            config = cifar_config(cifar100_prepared, f"data.backend={backend}")
            loader = make_loader(config, "val", train=False, distributed=True)
            assert loader.num_samples == 5000 and len(loader) == 20
            assert np.array_equal(loader.epoch_order(0), np.arange(5000))
        tensor_train = make_loader(
            cifar_config(cifar100_prepared, "data.backend=tensor"), "train", train=True, distributed=True
        )
        assert tensor_train.num_samples == 45_000
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="initialized process group"):
        make_loader(cifar_config(cifar100_prepared, "data.backend=tensor"), "val", train=False, distributed=True)


# --------------------------------------------------------------------------- devices and dtypes


def test_cuda_pipeline_moves_uint8_and_normalizes_in_torch():
    """The CUDA code paths, checked on CPU: FFCV's pipeline for CUDA transfers uint8 and has
    no NormalizeImage (it needs cupy there); the torch normalizer handles bf16 + channels_last."""
    from ffcv.transforms import NormalizeImage, ToDevice, ToTensor, ToTorchImage

    info = dataset_info("cifar100")
    cuda = _ffcv_pipelines(info, CIFAR100_NORMALIZATION, train=True, device=torch.device("cuda"))
    kinds = [type(op) for op in cuda["image"]]
    assert NormalizeImage not in kinds and kinds[-3:] == [ToTensor, ToDevice, ToTorchImage]
    assert cuda["image"][-2].non_blocking and isinstance(cuda["label"][-1], ToDevice)
    cpu = [
        type(op)
        for op in _ffcv_pipelines(info, CIFAR100_NORMALIZATION, train=False, device=torch.device("cpu"))["image"]
    ]
    assert cpu.index(NormalizeImage) < cpu.index(ToTensor) < cpu.index(ToTorchImage)

    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    half = Normalizer(CIFAR100_NORMALIZATION, "cpu", torch.bfloat16, channels_last=True)(pixels)
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(half.float(), torch_normalize(pixels), atol=0.02, rtol=0.01)


def test_channels_last_and_dtype_options(cifar100_prepared):
    loader = make_loader(
        cifar_config(cifar100_prepared, "data.backend=tensor", "train.channels_last='on'"), "val", train=False
    )
    images, _ = next(iter(loader))
    assert images.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="for CUDA"):
        make_loader(cifar_config(cifar100_prepared), "val", train=False, image_dtype=torch.bfloat16)


def test_ffcv_loader_threads_follow_data_num_workers(cifar100_prepared):
    def threads(workers: str) -> int:
        config = load_config(
            None, [f"data.prepared_dir={cifar100_prepared}", f"data.num_workers={workers}", "train.device=cpu"]
        )
        return make_loader(config, "val", train=False).ffcv_loader.num_workers

    # null: one thread beside a model training on the CPU (more only take cores from torch)
    assert threads("null") == 1
    assert threads("2") == 2


# --------------------------------------------------------------------------- translate / flip


def test_translate_flip_matches_a_naive_reference():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=generator)
    shift_y, shift_x = torch.tensor([0, 2, 4, 1, 3, 2]), torch.tensor([4, 0, 2, 3, 1, 2])
    flip = torch.tensor([False, True, False, True, True, False])
    result = translate_flip(images, shift_y, shift_x, flip, padding=2)
    for b in range(6):
        canvas = torch.zeros(3, 9, 11, dtype=torch.uint8)
        canvas[:, 2:7, 2:9] = images[b]
        expected = canvas[:, shift_y[b] : shift_y[b] + 5, shift_x[b] : shift_x[b] + 7]
        if flip[b]:
            expected = expected.flip(-1)
        assert torch.equal(result[b], expected)
    assert torch.equal(result[5], images[5])  # offset == padding and no flip: unchanged

    def random_translate_flip(seed: int) -> torch.Tensor:
        return translate_flip(
            images, *draw_translate_flip(len(images), 2, torch.Generator().manual_seed(seed)), padding=2
        )

    assert torch.equal(random_translate_flip(1), random_translate_flip(1))


# --------------------------------------------------------------------------- other datasets


def test_small_cifar10_end_to_end(tmp_path, make_cifar10):
    arrays = make_cifar10(tmp_path / "raw", per_class_train=12, per_class_test=5, archive=True)
    config = load_config(
        None,
        [
            "data.dataset=cifar10",
            f"data.root={tmp_path / 'raw'}",
            "data.val_size=20",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.backend=tensor",
            "data.train_subset=0",
            "train.batch_size=16",
        ],
    )
    result = prepare(config, console=Console(file=io.StringIO()))
    assert {k: v.num_samples for k, v in result.manifest.splits.items()} == {"train": 100, "val": 20, "test": 50}
    assert result.manifest.splits["val"].class_counts == [2] * 10
    loader = make_loader(config, "test", train=False)
    images = torch.cat([images for images, _ in loader])
    expected = torch.from_numpy(arrays["test_images"]).permute(0, 3, 1, 2)
    normalization = dataset_info("cifar10").normalization
    assert torch.equal(images, torch_normalize(expected, normalization.mean, normalization.std))
    train = make_loader(config, "train", train=True)
    images, _labels = next(iter(train))
    assert images.shape == (16, 3, 32, 32) and len(train) == 100 // 16


def test_imagenet_layout_prepares_as_jpeg_and_loads_crops(tmp_path, make_image_folders):
    make_image_folders(tmp_path / "raw", classes=3, train_per_class=6, val_per_class=2)
    config = load_config(
        None,
        [
            "data.dataset=imagenet",
            f"data.root={tmp_path / 'raw'}",
            "data.val_size=3",
            f"data.prepared_dir={tmp_path / 'prepared'}",
            "data.max_resolution=64",
            "data.num_workers=1",
            "train.batch_size=4",
            "model.arch=imagenet_resnet18",
        ],
    )
    result = prepare(config, console=Console(file=io.StringIO()))
    manifest = result.manifest
    assert manifest.fields["image"] == {
        "type": "RGBImageField",
        "write_mode": "jpg",
        "max_resolution": 64,
        "jpeg_quality": 90,
    }
    assert manifest.image_shape is None and manifest.normalization["mean"] == [0.485, 0.456, 0.406]
    assert {k: v.num_samples for k, v in manifest.splits.items()} == {"train": 15, "val": 3, "test": 6}

    train = make_loader(config, "train", train=True)
    assert isinstance(train, FFCVEpochLoader) and len(train) == 3
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32 and labels.dtype == torch.int64
    test = make_loader(config, "test", train=False)
    batches = list(test)
    assert [len(labels) for _, labels in batches] == [4, 2]
    assert torch.cat([labels for _, labels in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    # Class colours survive JPEG and cropping: the flat colour grows with the label.
    means = torch.cat([images for images, _ in batches]).mean(dim=(1, 2, 3))
    assert means[0] < means[2] < means[4]
    in_memory = read_split(config, "test")
    assert in_memory.images.shape == (6, 3, 224, 224) and in_memory.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="needs data.backend=ffcv"):
        make_loader(
            load_config(
                None,
                [
                    *(
                        f"{k}={v}"
                        for k, v in [
                            ("data.dataset", "imagenet"),
                            ("data.prepared_dir", tmp_path / "prepared"),
                            ("data.val_size", 3),
                            ("data.max_resolution", 64),
                            ("model.arch", "imagenet_resnet18"),
                            ("data.backend", "tensor"),
                        ]
                    )
                ],
            ),
            "train",
            train=True,
        )
