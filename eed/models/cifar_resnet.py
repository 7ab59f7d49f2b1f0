"""Residual networks for 32x32 inputs (CIFAR): ResNet-18/34/50/101/152, ResNeXt-29,
WideResNet-28-10 and PyramidNet-110.

Every builder takes ``width`` = channels of the first stage and scales the later
stages with it, keeping the depth; at the default width each network is the one the
paper uses. The exits are not built here: :class:`~eed.models.multi_exit.MultiExitNet`
attaches them between the stages returned in the :class:`Backbone`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3
from torchvision.ops import Conv2dNormActivation

from eed.models.backbone import Backbone
from eed.models.registry import register_backbone


def global_average_pool() -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def residual_stage(
    block: type[BasicBlock | Bottleneck],
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int,
    *,
    groups: int = 1,
    base_width: int = 64,
) -> nn.Sequential:
    """``num_blocks`` torchvision residual blocks; the first changes stride/width through a
    1x1 projection shortcut (as in torchvision's ``ResNet._make_layer``). ``groups`` and
    ``base_width`` go to each block (their defaults are torchvision's, the only values
    ``BasicBlock`` takes)."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, stride, downsample, groups=groups, base_width=base_width)]
    blocks += [block(out_channels, planes, groups=groups, base_width=base_width) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def cifar_resnet(
    block: type[BasicBlock | Bottleneck],
    blocks_per_stage: list[int],
    num_classes: int,
    width: int,
) -> Backbone:
    """The standard CIFAR ResNet: 3x3 stem conv (no max-pool), 4 stages at strides 1,2,2,2
    whose 3x3 convs are width, 2x, 4x, 8x wide."""
    stem = Conv2dNormActivation(3, width, kernel_size=3)
    stages, planes_per_stage, in_channels = [], [], width
    for index, num_blocks in enumerate(blocks_per_stage):
        planes = width * 2**index
        stages.append(residual_stage(block, in_channels, planes, num_blocks, stride=1 if index == 0 else 2))
        planes_per_stage.append(planes)
        in_channels = planes * block.expansion
    backbone = Backbone(
        stem=stem,
        stages=stages,
        stage_channels=[planes * block.expansion for planes in planes_per_stage],
        pool=global_average_pool(),
        fc=nn.Linear(in_channels, num_classes),
        # Bottleneck stages output 4x their 3x3-conv width; the exits use the conv width.
        conv_widths=planes_per_stage,
    )
    return backbone


@register_backbone("resnet18", input_size=32, default_width=64, family="cifar")
def resnet18(num_classes: int, width: int) -> Backbone:
    """ResNet-18 (BasicBlock 2-2-2-2) for CIFAR."""
    return cifar_resnet(BasicBlock, [2, 2, 2, 2], num_classes, width)


@register_backbone("resnet34", input_size=32, default_width=64, family="cifar")
def resnet34(num_classes: int, width: int) -> Backbone:
    """ResNet-34 (BasicBlock 3-4-6-3) for CIFAR."""
    return cifar_resnet(BasicBlock, [3, 4, 6, 3], num_classes, width)


@register_backbone("resnet50", input_size=32, default_width=64, family="cifar")
def resnet50(num_classes: int, width: int) -> Backbone:
    """ResNet-50 (Bottleneck 3-4-6-3) for CIFAR."""
    return cifar_resnet(Bottleneck, [3, 4, 6, 3], num_classes, width)


@register_backbone("resnet101", input_size=32, default_width=64, family="cifar")
def resnet101(num_classes: int, width: int) -> Backbone:
    """ResNet-101 (Bottleneck 3-4-23-3) for CIFAR."""
    return cifar_resnet(Bottleneck, [3, 4, 23, 3], num_classes, width)


@register_backbone("resnet152", input_size=32, default_width=64, family="cifar")
def resnet152(num_classes: int, width: int) -> Backbone:
    """ResNet-152 (Bottleneck 3-8-36-3) for CIFAR."""
    return cifar_resnet(Bottleneck, [3, 8, 36, 3], num_classes, width)


RESNEXT_CARDINALITY = 4


@register_backbone("resnext29", input_size=32, default_width=512, family="cifar")
def resnext29(num_classes: int, width: int) -> Backbone:
    """ResNeXt-29 4x64d for CIFAR: 3 stages of 3 grouped bottlenecks, 512/1024/2048 wide."""
    # The common CIFAR 4x64d (kuangliu's): a block's 3x3 conv is 4 groups x 64 channels
    # in stage 1 (doubling per stage) and it outputs twice that. torchvision's Bottleneck
    # has a 3x3 conv of planes * base_width / 64 * groups channels and outputs 4 * planes,
    # so base_width=32 with planes = width / 4 gives exactly this block.
    if width % (2 * RESNEXT_CARDINALITY):
        raise ValueError(f"resnext29: width must be a multiple of {2 * RESNEXT_CARDINALITY}, got {width}")
    stem_channels = width // 8  # 64 at 4x64d
    stages, in_channels = [], stem_channels
    for index in range(3):
        planes = width // 4 * 2**index
        stages.append(
            residual_stage(
                Bottleneck,
                in_channels,
                planes,
                3,
                stride=1 if index == 0 else 2,
                groups=RESNEXT_CARDINALITY,
                base_width=32,
            )
        )
        in_channels = planes * Bottleneck.expansion
    backbone = Backbone(
        stem=Conv2dNormActivation(3, stem_channels, kernel_size=3),
        stages=stages,
        stage_channels=[width, 2 * width, 4 * width],
        pool=global_average_pool(),
        fc=nn.Linear(in_channels, num_classes),
        # The grouped 3x3 convs are half as wide as the stage outputs; the exits use their width.
        conv_widths=[width // 2, width, 2 * width],
    )
    return backbone


class PreActBasicBlock(nn.Module):
    """WideResNet block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1 projection of the
    pre-activated input when the shape changes (Zagoruyko & Komodakis)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(activated)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


WRN_STEM_CHANNELS = 16  # fixed in WideResNets; the widening factor scales only the stages


@register_backbone("wrn28_10", input_size=32, default_width=160, family="cifar")
def wrn28_10(num_classes: int, width: int) -> Backbone:
    """WideResNet-28-10 for CIFAR: 3 stages of 4 pre-activation blocks, 160/320/640 wide."""
    blocks_per_stage = (28 - 4) // 6
    stages, in_channels = [], WRN_STEM_CHANNELS
    for index in range(3):
        out_channels = width * 2**index
        blocks = [
            PreActBasicBlock(
                in_channels if b == 0 else out_channels, out_channels, stride=2 if index > 0 and b == 0 else 1
            )
            for b in range(blocks_per_stage)
        ]
        stages.append(nn.Sequential(*blocks))
        in_channels = out_channels
    # Pre-activation blocks leave the last stage un-normalised: WRN ends with BN-ReLU.
    stages[-1].append(nn.BatchNorm2d(in_channels))
    stages[-1].append(nn.ReLU(inplace=True))
    return Backbone(
        stem=conv3x3(3, WRN_STEM_CHANNELS),
        stages=stages,
        stage_channels=[width, 2 * width, 4 * width],
        pool=global_average_pool(),
        fc=nn.Linear(in_channels, num_classes),
    )


class PyramidBasicBlock(nn.Module):
    """PyramidNet block: BN-conv3x3-BN-ReLU-conv3x3-BN; the shortcut is the input,
    average-pooled when the block halves the resolution and zero-padded to the
    block's (larger) width, so it adds no parameters (Han et al.)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut_pool = nn.AvgPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        shortcut = F.pad(self.shortcut_pool(x), (0, 0, 0, 0, 0, self.extra_channels))
        return self.residual(x) + shortcut


PYRAMID_DEPTH, PYRAMID_ALPHA, PYRAMID_STEM = 110, 270, 16


@register_backbone("pyramidnet110_270", input_size=32, default_width=PYRAMID_STEM + PYRAMID_ALPHA // 3, family="cifar")
def pyramidnet110_270(num_classes: int, width: int) -> Backbone:
    """PyramidNet-110 (alpha=270, basic blocks) for CIFAR: 3 stages of 18 blocks, 16 -> 286 channels."""
    # Channels grow by alpha / 54 per block from the 16-channel stem, so the first stage
    # outputs 16 + 270/3 = 106 channels; other widths scale stem and growth alike.
    blocks_per_stage = (PYRAMID_DEPTH - 2) // 6
    total_blocks = 3 * blocks_per_stage
    scale = width / (PYRAMID_STEM + PYRAMID_ALPHA / 3)

    def channels_after(block_count: int) -> int:
        return max(1, round(scale * (PYRAMID_STEM + PYRAMID_ALPHA * block_count / total_blocks)))

    stages, stage_channels, done = [], [], 0
    for index in range(3):
        blocks = []
        for b in range(blocks_per_stage):
            blocks.append(
                PyramidBasicBlock(
                    channels_after(done), channels_after(done + 1), stride=2 if index > 0 and b == 0 else 1
                )
            )
            done += 1
        stages.append(nn.Sequential(*blocks))
        stage_channels.append(channels_after(done))
    stages[-1].append(nn.BatchNorm2d(stage_channels[-1]))
    stages[-1].append(nn.ReLU(inplace=True))
    stem_channels = channels_after(0)
    return Backbone(
        stem=nn.Sequential(conv3x3(3, stem_channels), nn.BatchNorm2d(stem_channels)),
        stages=stages,
        stage_channels=stage_channels,
        pool=global_average_pool(),
        fc=nn.Linear(stage_channels[-1], num_classes),
    )
