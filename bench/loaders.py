"""1. Loader throughput (img/s), training augmentation, batch 256, over the same images.

Variants, each over the whole prepared CIFAR-100 train split (45,000 images; 175 batches,
last incomplete batch dropped), interleaved round by round:

* ``ffcv``: ``eed.data.make_loader(backend=ffcv)`` (FFCV Loader + the project's wrapper:
  RandomTranslate(4) + flip + NormalizeImage, labels cloned), ``data.num_workers`` = 2, the
  parallelism of the torchvision loader below;
* ``ffcv 1 thread``: the same with ``data.num_workers`` left null, i.e. the one thread the
  project uses when the model trains on the CPU (see ``DataConfig.workers``);
* ``ffcv raw``: the same FFCV ``Loader`` iterated directly (``loader.ffcv_loader``), to show
  what the wrapper costs;
* ``tensor``: ``make_loader(backend=tensor)``: uint8 in memory, vectorised translate/flip +
  normalize in torch (runs with the benchmark's torch thread count);
* ``torchvision``: ``torch.utils.data.DataLoader(num_workers=2, shuffle=True, drop_last=True,
  persistent_workers=True)`` over torchvision's ``CIFAR100`` dataset class holding the same
  uint8 arrays (its own ``__getitem__``: PIL image, then RandomCrop(32, padding=4) +
  RandomHorizontalFlip + ToTensor + Normalize with the same mean/std).

Warm-up, untimed: FFCV's first-batch JIT compile (``warmup()``), one torchvision epoch
(worker start, page faults), one tensor epoch. Batches are only received, not used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench import common

TARGET = 5.0
WORKERS = 2  # torchvision's DataLoader processes, and FFCV's threads in the main comparison
BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches", type=int, default=0, help="batches per timing (default 0: a whole epoch, 175 batches of 256)"
    )


def _torchvision_loader(
    images_nchw: torch.Tensor, labels: torch.Tensor, mean, std, workers: int, seed: int
) -> torch.utils.data.DataLoader:
    from torchvision import transforms
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.vision import VisionDataset

    class InMemoryCIFAR100(CIFAR100):
        """torchvision's CIFAR100 (its ``__getitem__``) over arrays already in memory: the
        same uint8 images the .beton holds, no pickle reading and no md5 check (the shared
        archive is re-packed, so torchvision's md5 check would refuse it)."""

        def __init__(self, data: np.ndarray, targets: list[int], transform) -> None:
            VisionDataset.__init__(self, root=None, transform=transform)
            self.train = True
            self.data, self.targets = data, targets

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    data = np.ascontiguousarray(images_nchw.permute(0, 2, 3, 1).numpy())  # N x H x W x C, as torchvision's
    dataset = InMemoryCIFAR100(data, labels.tolist(), transform)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
    )


def _epoch(iterable, max_batches: int) -> int:
    """Receive batches; the number of images received."""
    images = 0
    for index, (_x, y) in enumerate(iterable):
        images += int(y.shape[0])
        if max_batches and index + 1 >= max_batches:
            break
    return images


def run(args: argparse.Namespace) -> common.Result:
    from eed.data import make_loader, read_split

    started = common.now()
    prepared = common.ensure_prepared(args.prepared_dir)
    threads = common.resolve_threads(args.threads, prepared)
    cfg = common.config(prepared, "data.train_subset=0")  # the whole train split for every variant
    workers = WORKERS
    max_batches = args.batches or (40 if args.quick else 0)

    ffcv = make_loader(
        common.config(prepared, "data.train_subset=0", "data.backend=ffcv", f"data.num_workers={workers}"),
        "train",
        train=True,
        batch_size=BATCH,
    )
    ffcv_default = make_loader(
        common.config(prepared, "data.train_subset=0", "data.backend=ffcv"), "train", train=True, batch_size=BATCH
    )
    tensor = make_loader(
        common.config(prepared, "data.train_subset=0", "data.backend=tensor"), "train", train=True, batch_size=BATCH
    )
    arrays = read_split(cfg, "train")
    mean, std = arrays.normalization.mean, arrays.normalization.std
    vision = _torchvision_loader(arrays.images, arrays.labels, mean, std, workers, cfg.seed)
    raw = ffcv.ffcv_loader

    variants = {
        "ffcv": lambda: _epoch(ffcv, max_batches),
        "ffcv raw": lambda: _epoch(raw, max_batches),
        "ffcv 1 thread": lambda: _epoch(ffcv_default, max_batches),
        "tensor": lambda: _epoch(tensor, max_batches),
        "torchvision": lambda: _epoch(vision, max_batches),
    }
    # Warm-up: worker start (first, so that the workers fork before FFCV/numba start threads),
    # FFCV's JIT compile, page faults.
    variants["torchvision"]()
    ffcv.warmup(show_status=False)
    ffcv_default.warmup(show_status=False)
    for function in variants.values():
        torch.set_num_threads(threads)
        function()

    throughput: dict[str, list[float]] = {name: [] for name in variants}
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    for round_index in range(args.repeats):
        gate()
        for name in common.rotate(list(variants), round_index):
            torch.set_num_threads(threads)  # FFCV's raw Loader sets it on every __iter__
            seconds, images = common.timed(variants[name])
            throughput[name].append(images / seconds)
    torch.set_num_threads(threads)

    ratio = {
        name: [a / b for a, b in zip(throughput[name], throughput["torchvision"])]
        for name in ("ffcv", "ffcv raw", "ffcv 1 thread", "tensor")
    }
    rows = [common.Row(f"{name} loader", common.Stat(values), "img/s") for name, values in throughput.items()]
    rows += [
        common.target_row("ffcv ÷ torchvision", ratio["ffcv"], ">=", TARGET),
        common.target_row("tensor ÷ torchvision", ratio["tensor"], ">=", TARGET),
        common.target_row(
            "ffcv 1 thread ÷ torchvision",
            ratio["ffcv 1 thread"],
            ">=",
            TARGET,
            note=f"data.num_workers null on CPU: {ffcv_default.ffcv_loader.num_workers} thread",
        ),
        common.Row(
            "ffcv raw ÷ torchvision",
            common.Stat(ratio["ffcv raw"]),
            "×",
            note="FFCV Loader without the project's wrapper",
        ),
    ]
    images = (max_batches or len(ffcv)) * BATCH
    return common.Result(
        name="loaders",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "batch_size": BATCH,
            "images_per_timing": images,
            "repeats": args.repeats,
            "num_workers": workers,
            "split": "train (45,000 images)",
            "prepared_dir": str(prepared),
        },
    )
