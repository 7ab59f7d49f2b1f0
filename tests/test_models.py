"""The backbone registry and the multi-exit network built on it (paper section III-A)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from eed.errors import ConfigError
from eed.models import (
    MultiExitNet,
    count_parameters,
    create_model,
    get_spec,
    list_backbones,
    main_path_parameters,
)

NUM_CLASSES = 10
# Reduced widths keep the tests fast; ImageNet networks only exist at width 64, so they
# get a small input instead (they are fully convolutional up to the global pool).
SMALL_WIDTH = {"imagenet_resnet18": 64, "imagenet_resnet50": 64}
SMALL_INPUT = {"cifar": 32, "imagenet": 64}
THREE_STAGE = {"resnext29", "wrn28_10", "pyramidnet110_270"}


def small_model(arch: str, exits: bool = True) -> MultiExitNet:
    torch.manual_seed(0)
    return create_model(arch, NUM_CLASSES, SMALL_WIDTH.get(arch, 8), exits=exits)


def small_images(arch: str, batch: int = 2) -> torch.Tensor:
    size = SMALL_INPUT[get_spec(arch).family]
    return torch.randn(batch, 3, size, size)


def test_registry_lists_the_papers_architectures() -> None:
    assert set(list_backbones()) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "vgg19",
        "vgg19_strict",
        "resnext29",
        "wrn28_10",
        "pyramidnet110_270",
        "imagenet_resnet18",
        "imagenet_resnet50",
    }


@pytest.mark.parametrize("arch", list_backbones())
def test_forward_gives_every_classifier_and_stages_halve_resolution(arch: str) -> None:
    model = small_model(arch).eval()
    stage_sizes: list[int] = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, inputs, output: stage_sizes.append(output.shape[-1]))
    with torch.no_grad():
        out = model(small_images(arch))

    expected_classifiers = 3 if arch in THREE_STAGE else 4
    assert out.num_classifiers == model.num_classifiers == expected_classifiers
    assert model.classifier_names()[-1] == "main"
    assert all(logits.shape == (2, NUM_CLASSES) for logits in out.logits)
    feature_dim = out.features[-1].shape
    assert all(feature.shape == feature_dim for feature in out.features)
    assert feature_dim == (2, model.fc.in_features)
    # The Backbone contract the exits rely on: every stage after the first halves the resolution.
    assert all(later == earlier // 2 for earlier, later in itertools.pairwise(stage_sizes))


@pytest.mark.parametrize("arch", ["resnet18", "wrn28_10"])
def test_upto_runs_only_the_stages_it_needs(arch: str) -> None:
    model = small_model(arch).eval()
    calls = [0] * len(model.stages)
    for index, stage in enumerate(model.stages):
        stage.register_forward_hook(
            lambda module, inputs, output, index=index: calls.__setitem__(index, calls[index] + 1)
        )
    images = small_images(arch)
    for upto in range(1, model.num_classifiers + 1):
        calls[:] = [0] * len(calls)
        with torch.no_grad():
            out = model(images, upto=upto)
        assert out.num_classifiers == upto
        assert calls == [1] * upto + [0] * (len(calls) - upto)
    with pytest.raises(ValueError, match="upto"):
        model(images, upto=model.num_classifiers + 1)


@pytest.mark.parametrize("arch", ["resnet18", "vgg19", "pyramidnet110_270"])
def test_forward_main_is_the_main_output(arch: str) -> None:
    model = small_model(arch).eval()
    images = small_images(arch)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_main(images), model(images).main)


@pytest.mark.parametrize("arch", list_backbones())
def test_baseline_is_exactly_the_main_path(arch: str) -> None:
    multi_exit = small_model(arch)
    baseline = small_model(arch, exits=False)
    assert len(baseline.exits) == 0 and baseline.num_classifiers == 1
    assert count_parameters(baseline) == main_path_parameters(multi_exit)
    main_keys = {key for key in multi_exit.state_dict() if not key.startswith("exits.")}
    assert set(baseline.state_dict()) == main_keys
    with torch.no_grad():
        assert baseline.eval()(small_images(arch)).num_classifiers == 1


def exit_conv_shapes(model: MultiExitNet) -> list[list[tuple[int, int]]]:
    return [
        [(conv.in_channels, conv.out_channels) for conv in branch.modules() if isinstance(conv, nn.Conv2d)]
        for branch in model.exits
    ]


def test_resnet18_exit_convs_follow_the_paper() -> None:
    with torch.device("meta"):
        model = create_model("resnet18", 100)
    assert exit_conv_shapes(model) == [
        [(64, 128), (128, 256), (256, 512)],
        [(128, 256), (256, 512)],
        [(256, 512)],
    ]


def test_bottleneck_exit_convs_use_the_stage_conv_width() -> None:
    # Bottleneck stages output 4x their 3x3 width; Table III's ResNet-50 FLOPs need the 3x3 width.
    with torch.device("meta"):
        model = create_model("resnet50", 100)
    assert exit_conv_shapes(model) == [
        [(256, 128), (128, 256), (256, 2048)],
        [(512, 256), (256, 2048)],
        [(1024, 2048)],
    ]


def exit_resolutions(model: MultiExitNet, size: int = 32) -> list[int]:
    """Spatial size each exit's last conv outputs, at a ``size`` x ``size`` input."""
    sizes: list[int] = []
    for branch in model.exits:
        branch.convs.register_forward_hook(lambda module, inputs, output: sizes.append(output.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    return sizes


@pytest.mark.parametrize(("arch", "last_stride", "resolution"), [("vgg19", 1, 4), ("vgg19_strict", 2, 2)])
def test_vgg19_exit_convs(arch: str, last_stride: int, resolution: int) -> None:
    # vgg19: Table III's design, the exits' last conv at stride 1 so they end at 4x4;
    # vgg19_strict: the paper's stated rule, every conv stride 2, ending at 2x2 like the main path.
    with torch.device("meta"):
        model = create_model(arch, 100)
    assert exit_conv_shapes(model) == [
        [(64, 128), (128, 256), (256, 512)],
        [(128, 256), (256, 512)],
        [(256, 512)],
    ]
    strides = [[conv.stride[0] for conv in branch.modules() if isinstance(conv, nn.Conv2d)] for branch in model.exits]
    assert strides == [[2, 2, last_stride], [2, last_stride], [last_stride]]
    assert exit_resolutions(model) == [resolution] * 3


def test_width_scales_every_stage() -> None:
    with torch.device("meta"):
        assert create_model("resnet18", 10, width=16).stage_channels == [16, 32, 64, 128]
        assert create_model("resnet50", 10, width=16).stage_channels == [64, 128, 256, 512]
        assert create_model("vgg19", 10, width=16).stage_channels == [16, 32, 64, 128]
        assert create_model("wrn28_10", 10).stage_channels == [160, 320, 640]
        assert create_model("resnext29", 10).stage_channels == [512, 1024, 2048]
        assert create_model("pyramidnet110_270", 10).stage_channels == [106, 196, 286]


def test_unknown_arch_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="allowed: .*resnet18"):
        create_model("resnet19", 10)


def test_bad_widths_are_refused_with_the_allowed_value() -> None:
    with pytest.raises(ValueError, match="width must be 64"):
        create_model("imagenet_resnet18", 10, width=32)
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("resnext29", 10, width=12)
