"""The multi-exit network of the paper's section III-A, built from any :class:`Backbone`.

With k stages, k-1 exits attach after the first k-1 stages. The exit after stage i has
one 3x3 stride-2 convolution (+BN+ReLU) per later stage j, each outputting stage j's
convolution width, except the last one, which outputs the main network's feature width
so that F_i and F_k have the same size (the feature loss needs it); then global average
pooling gives F_i and a linear layer gives Z_i (paper section IV). For the CIFAR
ResNet-18 this is 64->128->256->512, 128->256->512 and 256->512.

A stage's convolution width is the width of its 3x3 convolutions. It equals the
channels the stage outputs except in bottleneck stages, whose 1x1 expansion makes
the output 4x wider: the CIFAR ResNet-50's exit 1 is 256->128->256->2048, the only
reading that gives the paper's Table III FLOPs (0.78 GFLOPs; 2.25 with the output
widths). A builder states such widths in ``Backbone.conv_widths``, and exit conv
strides other than 2 (VGG-19's Table III exits) in ``Backbone.exit_strides``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from torch import Tensor, nn

from eed.models.backbone import Backbone


def classifier_names(num_classifiers: int) -> tuple[str, ...]:
    """``("exit1", ..., "exit{k-1}", "main")``: the one naming of a network's classifiers,
    used by the objective's terms, every metric name, table and figure."""
    return (*tuple(f"exit{i}" for i in range(1, num_classifiers)), "main")


# A classifier's name, or the ensemble of all of them, as metric names spell them.
OUTPUT_NAME = re.compile(r"exit(\d+)|main|ensemble")


def output_order(name: str) -> tuple[int, int] | None:
    """Sort key exit1 < exit2 < ... < main < ensemble; None for a name that is none of them."""
    match = OUTPUT_NAME.fullmatch(name)
    if match is None:
        return None
    if match.group(1):
        return (0, int(match.group(1)))
    return (1, 0) if name == "main" else (2, 0)


def output_position(name: str) -> tuple[int, int]:
    """:func:`output_order` of a name already known to be an output's (a sort key); a ValueError otherwise."""
    order = output_order(name)
    if order is None:
        raise ValueError(f"{name!r} is not an output name (exit<i>, main or ensemble)")
    return order


@dataclass
class MultiExitOutput:
    """Every classifier's logits Z_1..Z_k and features F_1..F_k (index -1 = main)."""

    logits: list[Tensor]
    features: list[Tensor]

    @property
    def main(self) -> Tensor:
        return self.logits[-1]

    @property
    def num_classifiers(self) -> int:
        return len(self.logits)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ExitBranch(nn.Module):
    """Auxiliary classifier c_i: 3x3 convs (stride 2 unless ``strides`` says otherwise), GAP, linear."""

    def __init__(self, in_channels: int, conv_channels: list[int], num_classes: int, strides: list[int] | None = None):
        super().__init__()
        strides = strides or [2] * len(conv_channels)
        layers, channels = [], in_channels
        for out_channels, stride in zip(conv_channels, strides, strict=True):
            layers.append(conv_bn_relu(channels, out_channels, stride=stride))
            channels = out_channels
        self.convs = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.pool(self.convs(hidden))
        return feature, self.fc(feature)


class MultiExitNet(nn.Module):
    """Backbone + exits. ``exits=False`` gives the baseline: the same main path, no exits."""

    def __init__(self, backbone: Backbone, exits: bool = True):
        super().__init__()
        self.stem = backbone.stem
        self.stages = nn.ModuleList(backbone.stages)
        self.pool = backbone.pool
        self.fc = backbone.fc
        self.stage_channels = list(backbone.stage_channels)
        self.exits = nn.ModuleList()
        if exits:
            conv_widths, conv_strides = backbone.exit_widths, backbone.exit_conv_strides
            for i in range(len(self.stages) - 1):
                # One conv per later stage, widths of those stages; the last matches F_k.
                widths = conv_widths[i + 1 :]
                widths[-1] = backbone.feature_dim
                self.exits.append(
                    ExitBranch(self.stage_channels[i], widths, backbone.num_classes, strides=conv_strides[i + 1 :])
                )
        # The stage each classifier reads: exit i reads stage i, the main head the last stage.
        self.classifier_stages = [*list(range(len(self.exits))), len(self.stages) - 1]

    @property
    def num_classifiers(self) -> int:
        return len(self.exits) + 1

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def classifier_names(self) -> list[str]:
        return list(classifier_names(self.num_classifiers))

    def classifier_after_stage(self, stage_index: int) -> int | None:
        """The classifier that reads stage ``stage_index``'s output (0-based), if any."""
        return self.classifier_stages.index(stage_index) if stage_index in self.classifier_stages else None

    def stage_outputs(self, x: Tensor) -> Iterator[Tensor]:
        """Run the trunk lazily, yielding each stage's output (later stages only if consumed)."""
        hidden = self.stem(x)
        for stage in self.stages:
            hidden = stage(hidden)
            yield hidden

    def classify(self, index: int, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Feature and logits of classifier ``index`` (0-based; the last is main) from its stage output."""
        if index < len(self.exits):
            return self.exits[index](hidden)
        feature = self.pool(hidden)
        return feature, self.fc(feature)

    def forward(self, x: Tensor, upto: int | None = None) -> MultiExitOutput:
        """All classifiers in one pass; ``upto=i`` stops after classifier i (1-based) and
        skips the later stages entirely (anytime inference)."""
        last = self.num_classifiers if upto is None else upto
        if not 1 <= last <= self.num_classifiers:
            raise ValueError(f"upto must be in 1..{self.num_classifiers}, got {upto}")
        # islice stops the lazy trunk after the stage the last wanted classifier reads.
        hiddens = list(islice(self.stage_outputs(x), self.classifier_stages[last - 1] + 1))
        logits, features = [], []
        for index in range(last):
            feature, logit = self.classify(index, hiddens[self.classifier_stages[index]])
            features.append(feature)
            logits.append(logit)
        return MultiExitOutput(logits=logits, features=features)

    def forward_main(self, x: Tensor) -> Tensor:
        """Main output only: the exits are not computed."""
        *_, hidden = self.stage_outputs(x)
        return self.fc(self.pool(hidden))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main_path_parameters(net: MultiExitNet) -> int:
    """Parameters of the main path (what the baseline has)."""
    return count_parameters(net) - sum(count_parameters(e) for e in net.exits)
