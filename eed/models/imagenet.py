"""torchvision's ImageNet ResNet-18/50 (224x224 inputs), split into stem + 4 stages.

The stem is conv1, bn1, relu, maxpool; the stages are layer1..layer4; the head is the
average pool and fc. Only the architecture's own width (64) is offered: torchvision
hard-codes the stage widths 64/128/256/512 (``width_per_group`` widens only the
bottleneck's inner conv), so other widths would mean rebuilding the network.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import ResNet, resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

from eed.models.backbone import Backbone
from eed.models.registry import register_backbone

IMAGENET_WIDTH = 64


def split_torchvision_resnet(make: Callable[..., ResNet], name: str, num_classes: int, width: int) -> Backbone:
    if width != IMAGENET_WIDTH:
        raise ValueError(f"{name}: width must be {IMAGENET_WIDTH} (torchvision's fixed stage widths), got {width}")
    net = make(weights=None, num_classes=num_classes)
    first_block = net.layer1[0]
    if not isinstance(first_block, (BasicBlock, Bottleneck)):
        raise TypeError(f"{name}: expected torchvision residual blocks, got {type(first_block).__name__}")
    expansion = first_block.expansion
    planes_per_stage = [IMAGENET_WIDTH * 2**index for index in range(4)]
    backbone = Backbone(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        stages=[net.layer1, net.layer2, net.layer3, net.layer4],
        stage_channels=[planes * expansion for planes in planes_per_stage],
        pool=nn.Sequential(net.avgpool, nn.Flatten()),
        fc=net.fc,
        # Bottleneck stages output 4x their 3x3-conv width; the exits use the conv width.
        conv_widths=planes_per_stage,
    )
    return backbone


@register_backbone("imagenet_resnet18", input_size=224, default_width=IMAGENET_WIDTH, family="imagenet")
def imagenet_resnet18(num_classes: int, width: int) -> Backbone:
    """torchvision ResNet-18 for ImageNet (224x224)."""
    return split_torchvision_resnet(resnet18, "imagenet_resnet18", num_classes, width)


@register_backbone("imagenet_resnet50", input_size=224, default_width=IMAGENET_WIDTH, family="imagenet")
def imagenet_resnet50(num_classes: int, width: int) -> Backbone:
    """torchvision ResNet-50 for ImageNet (224x224)."""
    return split_torchvision_resnet(resnet50, "imagenet_resnet50", num_classes, width)
