"""VGG-19 with batch normalisation for 32x32 inputs (CIFAR), split into 4 stages.

The configuration is 64,64,M, 128,128,M, 256x4,M, 512x4,M, 512x4,M (M = 2x2 max-pool)
with one linear layer on the final 512 features. Each stage ends at a max-pool, so
every stage after the first halves the resolution as the Backbone contract requires:

    stem + stage 1: 64,64,M      -> 64 x 16x16
    stage 2:        128,128,M    -> 128 x 8x8
    stage 3:        256x4,M      -> 256 x 4x4
    stage 4:        512x4,M,512x4 -> 512 x 2x2; the head's max-pool is the final M.

The paper gives no VGG exit; Table III's 0.14 / 0.24 / 0.50 / 0.80 GFLOPs (exit 1/2/3/main)
is the only evidence of its design. Under the exit rule the paper states (one 3x3 stride-2
conv per later stage, widths of those stages, the last one 512 wide) no split of VGG-19
into 4 stages reproduces the exits: the best is ~10% off and this one gives
0.107 / 0.211 / 0.466. Exits whose convs end at 4x4, where VGG's 512-wide convs start,
with the last conv at stride 1, give 0.136 / 0.240 / 0.494 (main 0.796), all within 3%:

    exit 1: 64 -> 128 (s2, 8x8) -> 256 (s2, 4x4) -> 512 (s1, 4x4)
    exit 2:       128 -> 256 (s2, 4x4) -> 512 (s1, 4x4)
    exit 3:              256 -> 512 (s1, 4x4)

``vgg19`` has these exits (derived from Table III, not from the text); ``vgg19_strict``
keeps the stated rule, its exits ending at 2x2. The main path is the same in both, and
every F_i is globally pooled to F_main's 512 features either way.
"""

from __future__ import annotations

from typing import Literal

from torch import nn
from torchvision.ops import Conv2dNormActivation

from eed.models.backbone import Backbone
from eed.models.registry import register_backbone

# Convs per stage and their width relative to the first stage; stage 4 is VGG's two
# 512-wide blocks, separated by a max-pool.
VGG19_STAGES: list[list[int | Literal["M"]]] = [
    [1, 1, "M"],
    [2, 2, "M"],
    [4, 4, 4, 4, "M"],
    [8, 8, 8, 8, "M", 8, 8, 8, 8],
]

# Stride of the exit conv standing for each stage (no exit conv stands for stage 1):
# the one for stage 4 keeps 4x4, which Table III's exit GFLOPs require.
TABLE_III_EXIT_STRIDES = [2, 2, 2, 1]


def cifar_vgg19(num_classes: int, width: int, exit_strides: list[int] | None = None) -> Backbone:
    """VGG-19 with batch norm for CIFAR, 4 stages split at its max-pools; ``exit_strides``
    as in :class:`Backbone` (None = the paper's stride-2 rule)."""
    stem = Conv2dNormActivation(3, width, kernel_size=3)
    stages, stage_channels, channels = [], [], width
    for index, layout in enumerate(VGG19_STAGES):
        # The stem already holds the first conv of stage 1.
        layers: list[nn.Module] = []
        for item in layout[1:] if index == 0 else layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(Conv2dNormActivation(channels, item * width, kernel_size=3))
                channels = item * width
        stages.append(nn.Sequential(*layers))
        stage_channels.append(channels)
    return Backbone(
        stem=stem,
        stages=stages,
        stage_channels=stage_channels,
        pool=nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
        fc=nn.Linear(channels, num_classes),
        exit_strides=exit_strides,
    )


@register_backbone("vgg19", input_size=32, default_width=64, family="cifar")
def vgg19(num_classes: int, width: int) -> Backbone:
    """VGG-19 with batch norm for CIFAR, exits ending at 4x4 as Table III's GFLOPs require."""
    return cifar_vgg19(num_classes, width, exit_strides=TABLE_III_EXIT_STRIDES)


@register_backbone("vgg19_strict", input_size=32, default_width=64, family="cifar")
def vgg19_strict(num_classes: int, width: int) -> Backbone:
    """VGG-19 with batch norm for CIFAR, exits by the paper's stated rule (all stride 2, ending at 2x2)."""
    return cifar_vgg19(num_classes, width)
