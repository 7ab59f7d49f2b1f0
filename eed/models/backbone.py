"""What a backbone exposes so that exits can attach to it without per-model surgery."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn


@dataclass
class Backbone:
    """A CNN split at its resolution changes.

    ``stem`` maps the image to the first stage's input; ``stages`` run in order, and
    ``stage_channels[i]`` is the channel count that stage ``i`` outputs. The head is
    ``pool`` (feature map -> feature vector F_k, e.g. global average pooling + flatten)
    followed by ``fc`` (F_k -> logits Z_k). Every stage after the first must halve the
    spatial resolution, so an exit reaches the final resolution with one stride-2
    convolution per later stage (unless ``exit_strides`` says otherwise).
    """

    stem: nn.Module
    stages: list[nn.Module]
    stage_channels: list[int]
    pool: nn.Module
    fc: nn.Linear
    # Width of each stage's 3x3 convs, which the exit convs take (paper Table III);
    # None = stage_channels. Bottleneck stages differ: ResNet-50 has 64..512 vs outputs 256..2048.
    conv_widths: list[int] | None = None
    # Stride of the exit conv standing for each stage; None = 2 for every stage (the paper's rule).
    # VGG-19's Table III exits end before its last halving, so their last conv has stride 1.
    exit_strides: list[int] | None = None

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.stage_channels):
            raise ValueError("Backbone: one channel count per stage is required")
        if len(self.stages) < 1:
            raise ValueError("Backbone: at least one stage is required")
        if self.conv_widths is not None and len(self.conv_widths) != len(self.stages):
            raise ValueError("Backbone: one conv width per stage is required")
        if self.exit_strides is not None and len(self.exit_strides) != len(self.stages):
            raise ValueError("Backbone: one exit stride per stage is required")

    @property
    def exit_widths(self) -> list[int]:
        return list(self.conv_widths or self.stage_channels)

    @property
    def exit_conv_strides(self) -> list[int]:
        return list(self.exit_strides or [2] * len(self.stages))

    @property
    def feature_dim(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def without_stem_relu(self) -> Backbone:
        """This backbone with every ReLU directly in its stem replaced by an identity (the
        official release's CIFAR ResNet stem is conv-BN). Layer indices, hence parameter
        names, stay the same, so a checkpoint loads into either; a stem without a ReLU is
        returned unchanged."""
        if not isinstance(self.stem, nn.Sequential) or not any(isinstance(m, nn.ReLU) for m in self.stem):
            return self
        stem = nn.Sequential(*(nn.Identity() if isinstance(m, nn.ReLU) else m for m in self.stem))
        return replace(self, stem=stem)
