"""Loaders: one entry point, :func:`make_loader`, and two backends behind it.

Every loader yields ``(images, labels)``: ``images`` a normalized float tensor of shape
N x 3 x H x W (channels_last memory when asked), ``labels`` int64 of shape N, both on the
requested device. It also has ``len()`` (batches per epoch), ``num_samples`` (samples this
process visits per epoch, before ``drop_last``), ``batch_size``, ``drop_last``, ``epoch``,
``num_classes``, ``class_names``, :meth:`set_epoch`, :meth:`epoch_order` and :meth:`warmup`.

Epochs: each iteration runs epoch ``loader.epoch`` and then advances it by one;
``set_epoch(e)`` chooses the epoch the next iteration runs. The sample order (and, for the
tensor backend, the augmentation) depends only on ``(seed, epoch)``, so a trainer that
resumes after epoch ``e`` calls ``set_epoch(e + 1)`` and continues the same sequence.

Training loaders shuffle and drop the last incomplete batch; evaluation loaders keep
every sample (``drop_last=False``) in file order.

Backends (``data.backend``):

* ``ffcv``: FFCV's ``Loader`` reading the ``.beton`` with JIT-compiled pipelines.
  Small images: random translate (padding 4) + horizontal flip; ImageNet: random
  resized crop + flip, evaluation center crop. Facts about FFCV 1.0.2 built in here:
  ``NormalizeImage`` runs before ``ToTensor`` (placed after ``ToTorchImage`` the loader
  spins forever on CPU; on CUDA it needs cupy, so there the normalization is done in
  torch after the transfer); ``drop_last`` is set explicitly (FFCV defaults to True);
  FFCV reuses its output buffers every few batches, so the loader hands out copies
  (images and labels are fresh tensors: keeping a batch is safe);
  FFCV's ``seed`` fixes the sample order only, its augmentations draw from numba's
  per-thread generators and are **not reproducible**; the first batch of each new loader
  spends ~10 s compiling, which :meth:`FFCVEpochLoader.warmup` does outside any timing.
  FFCV also sets torch's thread count (to 1 on import, to ``num_workers`` in its loader);
  the data layer puts it back (:mod:`eed.data.ffcv_import`). Measured on 2 CPU cores,
  batch 256, 2 workers, CIFAR training batches: ~110k img/s (NCHW), ~125k (channels_last).
  When the model also runs on the CPU, ``data.num_workers: null`` means 1 thread: numba's
  TBB team of 2 took ~7 % of a training step from torch's threads, 1 thread ~3 %.
* ``tensor``: the whole split as uint8 in memory (on the GPU when training there, read
  from the ``.beton`` by :func:`eed.data.memory.read_split`), augmented per batch with
  vectorised torch ops of the same semantics (:mod:`eed.data.augment`). Bit-reproducible:
  order and augmentation come from generators seeded by ``(seed, epoch, rank)``. Small
  fixed-size images only (CIFAR, synthetic); ImageNet needs ``ffcv``. Batches are cut on
  one CPU thread (see :func:`_one_cpu_thread`): ~105-160k img/s on the same 2 cores.

Both backends visit samples in the same order for the same seed and epoch (NumPy's
``default_rng(seed + epoch)`` permutation, or PyTorch's ``DistributedSampler`` under DDP,
which pads each rank to the same count by repeating samples, for evaluation too).
"""

from __future__ import annotations

import contextlib
import math
import queue
from collections.abc import Iterator
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from rich.console import Console

from eed.config import Config
from eed.data.augment import Normalizer, draw_translate_flip, translate_flip
from eed.data.catalog import (
    IMAGENET_EVAL_CROP_RATIO,
    IMAGENET_EVAL_RESOLUTION,
    IMAGENET_TRAIN_RESOLUTION,
    TRANSLATE_PADDING,
    DatasetInfo,
    Normalization,
    dataset_info,
)
from eed.data.ffcv_import import import_ffcv, keep_torch_threads
from eed.data.manifest import load_manifest
from eed.data.memory import read_labels, read_split
from eed.data.splits import stratified_sample
from eed.device import resolve_device, uses_channels_last
from eed.errors import ConfigError, DataError

Split = Literal["train", "val", "test"]
Batch = tuple[torch.Tensor, torch.Tensor]
WARMUP_MESSAGE = "compiling FFCV pipeline (first batch, ~10 s)…"
# Each FFCV loader's compiled pipeline lives as long as the process: when numba dispatchers
# of a dead loader are garbage collected, their finalizer can raise a spurious KeyError
# ("Exception ignored in: <finalize object>"). The compiled code holds no data.
_KEEP_ALIVE: list = []


@runtime_checkable
class EpochLoader(Protocol):
    """What the trainer, evaluation and RDM code rely on (both backends provide it)."""

    batch_size: int
    num_samples: int
    drop_last: bool
    epoch: int
    num_classes: int
    class_names: list[str]

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def epoch_order(self, epoch: int) -> np.ndarray: ...
    def warmup(self, console: Console | None = None, show_status: bool = True) -> None: ...


def make_loader(
    config: Config,
    split: Split,
    *,
    train: bool,
    device: torch.device | str = "cpu",
    distributed: bool = False,
    epoch: int = 0,
    batch_size: int | None = None,
    image_dtype: torch.dtype = torch.float32,
) -> EpochLoader:
    """The loader of ``split`` of the prepared ``config.data.dataset``.

    ``train``: shuffle, augment and drop the last incomplete batch. ``device``: where batches
    land ("auto" = CUDA when available). ``distributed``: shard the samples over the ranks of
    the initialized process group, each taking its share of the (global) batch. ``epoch``: the epoch the first iteration runs.
    ``batch_size``: default ``config.train.batch_size``. ``image_dtype``: float32, or
    bfloat16/float16 on CUDA. ``data.train_subset`` applies to the train split (stratified,
    seeded by ``data.split_seed``). Order and tensor-backend augmentation are seeded by
    ``config.seed`` (the run's seed). Raises :class:`DataError` when the prepared data is missing
    or does not match the params.
    """
    manifest = load_manifest(config)
    path = manifest.split_path(split)
    device = resolve_device(device)
    if image_dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"image_dtype {image_dtype} is for CUDA; on {device} the loaders produce float32")
    channels_last = uses_channels_last(config.train.channels_last, device)
    batch_size = batch_size or config.train.batch_size
    if distributed:  # train.batch_size is the global batch: the ranks share it, at the same lr
        world_size = _rank_and_world_size(distributed)[1]
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size: the global batch of {batch_size} must divide among the "
                f"{world_size} processes (train.nproc x train.nnodes)"
            )
        batch_size //= world_size
    info = dataset_info(manifest.dataset)
    normalization = Normalization.from_lists(manifest.normalization)
    subset = config.data.train_subset or 0

    if config.data.backend == "tensor":
        if manifest.image_shape is None:
            raise DataError(
                f"the tensor backend holds fixed-size images in memory; {manifest.dataset} needs data.backend=ffcv"
            )
        assert manifest.directory is not None  # load_manifest read it from disk (split_path checked it too)
        arrays = read_split(manifest.directory, split)
        manifest.check_labels(split, arrays.labels.numpy())
        sample_ids = _subset(arrays.labels.numpy(), split, subset, config.data.split_seed)
        images, labels = arrays.images, arrays.labels
        if len(sample_ids) != len(labels):
            index = torch.from_numpy(sample_ids)
            images, labels = images[index], labels[index]
        rank, world_size = _rank_and_world_size(distributed)
        loader: EpochLoader = TensorEpochLoader(
            images.to(device),
            labels.to(device),
            sample_ids,
            batch_size=batch_size,
            train=train,
            seed=config.seed,
            epoch=epoch,
            normalizer=Normalizer(normalization, device, image_dtype, channels_last),
            rank=rank,
            world_size=world_size,
            distributed=distributed,
            class_names=manifest.class_names,
        )
    else:
        labels = read_labels(path)
        manifest.check_labels(split, labels)
        sample_ids = _subset(labels, split, subset, config.data.split_seed)
        loader = FFCVEpochLoader(
            str(path),
            info,
            normalization,
            sample_ids,
            batch_size=batch_size,
            train=train,
            seed=config.seed,
            epoch=epoch,
            device=device,
            channels_last=channels_last,
            image_dtype=image_dtype,
            num_workers=config.data.workers(compute_on_cpu=device.type == "cpu"),
            distributed=distributed,
            class_names=manifest.class_names,
        )
    if len(loader) == 0:
        raise DataError(
            f"the {split} split has {loader.num_samples} samples for this process, not one full batch "
            f"of {batch_size}; lower train.batch_size"
        )
    return loader


def _subset(labels: np.ndarray, split: str, train_subset: int, seed: int) -> np.ndarray:
    """Sample ids (positions in the split's file) a loader visits: all, or for the train
    split a stratified ``train_subset`` of them (all when the subset is 0 or not smaller)."""
    if split != "train" or train_subset <= 0 or train_subset >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return stratified_sample(labels, train_subset, seed, "train_subset")


def _rank_and_world_size(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialized process group (torch.distributed.init_process_group)")
    return dist.get_rank(), dist.get_world_size()


def _seed_for(*parts: int) -> int:
    """A well-mixed 32-bit seed from several integers (seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _sample_order(
    count: int, *, shuffle: bool, seed: int, epoch: int, distributed: bool, rank: int, world_size: int
) -> np.ndarray:
    """Positions ``0..count-1`` in the order one process visits them: FFCV's own rule, so
    both backends agree (``default_rng(seed + epoch)``, or DistributedSampler under DDP)."""
    if distributed:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            range(count),  # pyright: ignore[reportArgumentType]  # torch types it Dataset; the sampler only takes len()
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    if shuffle:
        return np.random.default_rng(seed + epoch).permutation(count)
    return np.arange(count, dtype=np.int64)


# --------------------------------------------------------------------------- tensor backend


class TensorEpochLoader:
    """Batches cut from uint8 images held in memory (see the module docstring)."""

    backend = "tensor"

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        sample_ids: np.ndarray,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int = 0,
        normalizer: Normalizer,
        class_names: list[str],
        rank: int = 0,
        world_size: int = 1,
        distributed: bool = False,
        padding: int = TRANSLATE_PADDING,
    ):
        self.images, self.labels = images, labels  # uint8 N x 3 x H x W, int64 N, on the output device
        self.sample_ids = sample_ids  # position of each held image in the split's file
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, epoch
        self.drop_last = train
        self.normalizer, self.padding = normalizer, padding
        self.rank, self.world_size, self.distributed = rank, world_size, distributed
        self.class_names, self.num_classes = list(class_names), len(class_names)
        self.num_samples = math.ceil(len(labels) / world_size) if distributed else len(labels)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _positions(self, epoch: int) -> np.ndarray:
        return _sample_order(
            len(self.labels),
            shuffle=self.train,
            seed=self.seed,
            epoch=epoch,
            distributed=self.distributed,
            rank=self.rank,
            world_size=self.world_size,
        )

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids (positions in the split's file) in the order epoch ``epoch`` visits them."""
        return self.sample_ids[self._positions(epoch)]

    def warmup(self, console: Console | None = None, show_status: bool = True) -> None:
        """Nothing to compile; present so callers need not know the backend."""

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        device = self.images.device
        positions = torch.from_numpy(self._positions(epoch)).to(device)
        shifts: list[torch.Tensor] = []  # drawn for training only
        if self.train:
            # One draw per visited sample, made up front: a sample's augmentation does not
            # depend on the batch size, and the stream never touches the device's RNG.
            generator = torch.Generator().manual_seed(_seed_for(self.seed, epoch, self.rank))
            shifts = [draw.to(device) for draw in draw_translate_flip(len(positions), self.padding, generator)]
        end = len(self) * self.batch_size if self.drop_last else len(positions)
        for start in range(0, end, self.batch_size):
            with _one_cpu_thread(device):
                index = positions[start : start + self.batch_size]
                images = self.images[index]
                if self.train:
                    shift_y, shift_x, flip = (draw[start : start + self.batch_size] for draw in shifts)
                    images = translate_flip(images, shift_y, shift_x, flip, self.padding)
                batch = self.normalizer(images), self.labels[index]
            yield batch


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Cut a CPU batch on one torch thread, then give the caller its threads back. The ops
    are small and memory-bound; on 2 shared cores torch's OpenMP threads, spinning while
    another process holds a core, made them 25x slower (4k instead of 105k img/s)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- FFCV backend


class FFCVEpochLoader:
    """FFCV's ``Loader`` behind the :class:`EpochLoader` interface (see the module docstring)."""

    backend = "ffcv"

    def __init__(
        self,
        path: str,
        info: DatasetInfo,
        normalization: Normalization,
        sample_ids: np.ndarray,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int = 0,
        device: torch.device,
        channels_last: bool,
        image_dtype: torch.dtype = torch.float32,
        num_workers: int = 1,
        distributed: bool = False,
        class_names: list[str],
    ):
        import_ffcv()
        from ffcv.loader import Loader, OrderOption

        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, epoch
        self.drop_last = train
        self.device, self.distributed = device, distributed
        self.class_names, self.num_classes = list(class_names), len(class_names)
        pipelines = _ffcv_pipelines(info, normalization, train=train, device=device)
        # On CUDA the images arrive as uint8 and are normalized here (see _ffcv_pipelines).
        self._normalizer = (
            Normalizer(normalization, device, image_dtype, channels_last) if device.type == "cuda" else None
        )
        self.channels_last = channels_last
        with keep_torch_threads():
            self._loader = Loader(
                path,
                batch_size=batch_size,
                num_workers=max(1, num_workers),
                order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                distributed=distributed,
                seed=seed,
                # ffcv types indices Sequence[int]; it takes any array (np.array(indices)).
                indices=sample_ids,  # pyright: ignore[reportArgumentType]
                pipelines=pipelines,
                drop_last=self.drop_last,
            )
        self.num_samples = len(self._loader.first_traversal_order)
        self._compiled = False
        _KEEP_ALIVE.append(self._loader.code)

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids (positions in the split's file) in the order epoch ``epoch`` visits them."""
        return np.asarray(self._loader.traversal_order.sample_order(epoch), dtype=np.int64)

    def warmup(self, console: Console | None = None, show_status: bool = True) -> None:
        """Run one batch through the pipeline so its ~10 s JIT compilation happens now,
        not inside the first epoch's timing. The epoch counter is not touched."""
        if self._compiled:
            return
        from ffcv.loader.epoch_iterator import EpochIterator

        status = (console or Console(stderr=True)).status(WARMUP_MESSAGE) if show_status else contextlib.nullcontext()
        with status, keep_torch_threads():
            for _ in EpochIterator(self._loader, self._loader.first_traversal_order[: self.batch_size]):
                pass
        self._compiled = True

    def __iter__(self) -> Iterator[Batch]:
        self._loader.next_epoch = self.epoch  # FFCV's order for epoch e is a function of (seed, e)
        self.epoch += 1
        with keep_torch_threads():
            iterator = iter(self._loader)
        finished = False
        try:
            for images, labels in iterator:
                if self._normalizer is not None:
                    images = self._normalizer(images)  # a new tensor
                else:
                    images = _copy_out(images, self.channels_last)
                yield images, labels.reshape(-1).clone()
            finished = True
        finally:
            self._compiled = True
            if not finished:
                _stop_early(iterator)

    @property
    def ffcv_loader(self):  # -> ffcv.loader.Loader
        """The underlying FFCV loader, for benchmarks and debugging."""
        return self._loader


def _copy_out(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A copy of a CPU batch that FFCV will overwrite a few batches later, NCHW-contiguous
    or channels_last. NumPy copies on one thread: a torch copy wakes torch's OpenMP threads,
    whose spinning starves FFCV's numba threads (15k instead of 110k img/s on 2 cores)."""
    array = images.numpy()  # N x C x H x W view of FFCV's N x H x W x C buffer
    if channels_last:
        return torch.from_numpy(array.transpose(0, 2, 3, 1).copy()).permute(0, 3, 1, 2)
    return torch.from_numpy(np.array(array, order="C"))


def _ffcv_pipelines(
    info: DatasetInfo, normalization: Normalization, *, train: bool, device: torch.device
) -> dict[str, list]:
    import_ffcv()
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        IntDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.transforms import (
        NormalizeImage,
        RandomHorizontalFlip,
        RandomTranslate,
        Squeeze,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    if info.augmentation == "translate_flip":
        image: list = [SimpleRGBImageDecoder()]
        if train:
            image += [RandomTranslate(padding=TRANSLATE_PADDING), RandomHorizontalFlip()]
    elif train:
        size = (IMAGENET_TRAIN_RESOLUTION, IMAGENET_TRAIN_RESOLUTION)
        image = [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip()]
    else:
        size = (IMAGENET_EVAL_RESOLUTION, IMAGENET_EVAL_RESOLUTION)
        image = [CenterCropRGBImageDecoder(size, ratio=IMAGENET_EVAL_CROP_RATIO)]
    label: list = [IntDecoder(), ToTensor(), Squeeze()]
    if device.type == "cuda":
        # uint8 travels to the GPU (4x less than float32); normalized there in torch, because
        # FFCV's GPU NormalizeImage needs cupy.
        image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]
        label += [ToDevice(device, non_blocking=True)]
    else:
        # NormalizeImage must come before ToTensor: after ToTorchImage the Loader spins forever on CPU.
        # ToTorchImage(channels_last=True) is a free view; the loader then copies the batch out
        # (_copy_out). ToTorchImage's own NCHW copy would run torch's OpenMP threads inside
        # FFCV's thread, fighting numba's threads: 15k instead of 110k img/s on 2 cores.
        image += [
            # ffcv types the third argument np.dtype; its docs and code take a scalar type such as np.float16.
            NormalizeImage(
                normalization.mean_255(),
                normalization.std_255(),
                np.float32,  # pyright: ignore[reportArgumentType]
            ),
            ToTensor(),
            ToTorchImage(channels_last=True),
        ]
    return {"image": image, "label": label}


def _stop_early(iterator) -> None:
    """Stop an FFCV epoch the consumer left early (break, exception): let the batch in flight
    finish, then end the background thread, so it neither burns CPU nor races the next epoch."""
    iterator.iter_ixes = iter(())  # the producer thread takes no further batch
    while iterator.is_alive():
        try:
            if iterator.output_queue.get(timeout=0.1) is None:  # the producer's end marker
                break
        except queue.Empty:
            pass
    iterator.join(timeout=5)
    iterator.close()
