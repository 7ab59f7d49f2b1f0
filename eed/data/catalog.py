"""What the project knows about each dataset, in one place: normalization constants,
official class lists, how images are stored in the ``.beton`` files and how they are
augmented for training.

Nothing here reads files; :mod:`eed.data.sources` checks real files against these facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

DatasetName = Literal["cifar10", "cifar100", "imagenet", "synthetic"]
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Normalization:
    """Per-channel RGB mean and std on the 0..1 scale: ``x = (pixel / 255 - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_lists(cls, values: Mapping[str, Sequence[float]]) -> Normalization:
        """From ``{"mean": [r, g, b], "std": [r, g, b]}``, the form a manifest and a served model store."""
        mean, std = tuple(values["mean"]), tuple(values["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"normalization needs one mean and one std per RGB channel, got {dict(values)}")
        return cls(mean, std)

    def mean_255(self) -> np.ndarray:
        """Mean on the 0..255 pixel scale (float64), the form FFCV's ``NormalizeImage`` takes."""
        return np.array(self.mean, dtype=np.float64) * 255

    def std_255(self) -> np.ndarray:
        return np.array(self.std, dtype=np.float64) * 255


@dataclass(frozen=True)
class DatasetInfo:
    name: DatasetName
    normalization: Normalization
    # How images go into the .beton: raw uint8 pixels (lossless; JPEG is lossy at 32x32)
    # or JPEG (ImageNet: variable sizes, 150 GB raw).
    write_mode: Literal["raw", "jpg"]
    # Training augmentation: random translate (padding 4) + flip for small fixed-size images;
    # random resized crop + flip for ImageNet.
    augmentation: Literal["translate_flip", "resized_crop_flip"]


# Measured on the real training sets (CIFAR-100: this project's copy, 50,000 images).
# CIFAR-10's std is the true per-pixel std, not the often-copied (0.2023, 0.1994, 0.2010).
CIFAR10_NORMALIZATION = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
CIFAR100_NORMALIZATION = Normalization(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# Synthetic pixels are the average of two uniform draws: mean 0.5, std sqrt(1/24).
SYNTHETIC_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.2041, 0.2041, 0.2041))

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", CIFAR10_NORMALIZATION, "raw", "translate_flip"),
    "cifar100": DatasetInfo("cifar100", CIFAR100_NORMALIZATION, "raw", "translate_flip"),
    "imagenet": DatasetInfo("imagenet", IMAGENET_NORMALIZATION, "jpg", "resized_crop_flip"),
    "synthetic": DatasetInfo("synthetic", SYNTHETIC_NORMALIZATION, "raw", "translate_flip"),
}

# Pixels of zero padding for the random translation of small images (the paper's
# "pad 4, random crop 32").
TRANSLATE_PADDING = 4
# ImageNet: training crops and evaluation center crops (ratio = crop / shorter side).
IMAGENET_TRAIN_RESOLUTION = 224
IMAGENET_EVAL_RESOLUTION = 224
IMAGENET_EVAL_CROP_RATIO = 224 / 256

# The official class lists, in label order (the `label_names` / `fine_label_names` of
# each archive's meta file). A meta file that disagrees is rejected: labels would mean
# other classes.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
