"""What each output of a multi-exit network costs: GFLOPs and parameters (Table III).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add,
convolutions and linear layers), never by hand. The trunk runs once, stage by stage,
and every stage, exit and head is counted on its own, so the early-exit evaluator can
charge the shared trunk once: obtaining output i costs the stem, stages 1..i and
classifier i. Architectures named in the registry are profiled on the ``meta`` device,
where shapes flow but nothing is computed, so even ResNet-152 is profiled instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from eed.models.multi_exit import MultiExitNet, count_parameters
from eed.models.registry import create_model, get_spec, list_backbones

# Classes of the dataset each family is evaluated on (CIFAR-100, ImageNet).
DEFAULT_NUM_CLASSES = {"cifar": 100, "imagenet": 1000}


@dataclass(frozen=True)
class OutputCost:
    """GFLOPs and parameters needed to obtain one output from the input image."""

    name: str
    gflops: float
    params: int


@dataclass
class FlopsProfile:
    """Per-output costs and the per-module costs they are summed from (GFLOPs per image).

    ``stage_gflops[0]`` includes the stem. Output i < k costs
    ``sum(stage_gflops[:i + 1]) + exit_gflops[i]``; the main output costs all stages
    plus ``main_head_gflops``. ``total_params`` counts the whole network, exits included.
    """

    outputs: list[OutputCost]
    stage_gflops: list[float]
    exit_gflops: list[float]
    main_head_gflops: float
    total_params: int
    input_size: int
    arch: str | None = None
    width: int | None = None
    num_classes: int | None = None

    @property
    def main(self) -> OutputCost:
        return self.outputs[-1]

    def percent_of_main(self) -> list[float]:
        """Each output's GFLOPs as a percentage of the main output's."""
        return [100.0 * output.gflops / self.main.gflops for output in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for output, percent in zip(record["outputs"], self.percent_of_main()):
            output["percent_of_main"] = percent
        return record


def _counted(run: Callable[[Tensor], Any], inputs: Tensor) -> tuple[Any, float]:
    """``run(inputs)`` and the FLOPs it took, in GFLOPs per image."""
    with FlopCounterMode(display=False) as counter:
        result = run(inputs)
    return result, counter.get_total_flops() / 1e9 / inputs.shape[0]


@torch.no_grad()
def profile_model(model: MultiExitNet, input_size: int, batch: int = 1) -> FlopsProfile:
    """Count every stage, exit and the main head once, in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    images = torch.zeros(batch, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype)

    def stem_then_stage_1(x: Tensor) -> Tensor:
        return model.stages[0](model.stem(x))

    hidden, first_stage = _counted(stem_then_stage_1, images)
    stage_gflops, hiddens = [first_stage], [hidden]
    for stage in model.stages[1:]:
        hidden, gflops = _counted(stage, hidden)
        stage_gflops.append(gflops)
        hiddens.append(hidden)
    exit_gflops = [_counted(branch, hiddens[i])[1] for i, branch in enumerate(model.exits)]
    main_head_gflops = _counted(lambda x: model.fc(model.pool(x)), hiddens[-1])[1]
    model.train(was_training)

    trunk_params = [count_parameters(model.stem)]
    for stage in model.stages:
        trunk_params.append(trunk_params[-1] + count_parameters(stage))
    # trunk_params[i + 1] = parameters of the stem and stages 1..i+1.
    outputs = [
        OutputCost(name, sum(stage_gflops[: i + 1]) + exit_gflops[i], trunk_params[i + 1] + count_parameters(branch))
        for i, (name, branch) in enumerate(zip(model.classifier_names(), model.exits))
    ]
    outputs.append(
        OutputCost(
            "main",
            sum(stage_gflops) + main_head_gflops,
            trunk_params[-1] + count_parameters(model.pool) + count_parameters(model.fc),
        )
    )
    return FlopsProfile(outputs, stage_gflops, exit_gflops, main_head_gflops, count_parameters(model), input_size)


def arch_profile(arch: str, num_classes: int | None = None, width: int | None = None) -> FlopsProfile:
    """The full profile of a registered architecture at its input size (built on ``meta``);
    ``num_classes`` defaults to its family's dataset."""
    spec = get_spec(arch)
    num_classes = num_classes or DEFAULT_NUM_CLASSES[spec.family]
    with torch.device("meta"):
        model = create_model(arch, num_classes, width)
    profile = profile_model(model, spec.input_size)
    profile.arch, profile.width, profile.num_classes = arch, width or spec.default_width, num_classes
    return profile


@dataclass(frozen=True)
class BackboneSummary:
    """One row of ``eed models``; ``error`` says why an architecture has no such width."""

    name: str
    family: str
    input_size: int
    num_exits: int
    width: int
    params: int = 0
    main_gflops: float = 0.0
    error: str | None = None


def summarize_backbones(width: int | None = None) -> list[BackboneSummary]:
    """Every registered backbone with its multi-exit parameters and main-output GFLOPs,
    at ``width`` (default: each one's own) and its family's class count."""
    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        row_width = width or spec.default_width
        try:
            profile = arch_profile(name, width=row_width)
        except ValueError as error:
            rows.append(BackboneSummary(name, spec.family, spec.input_size, 0, row_width, error=str(error)))
            continue
        rows.append(
            BackboneSummary(
                name,
                spec.family,
                spec.input_size,
                len(profile.outputs) - 1,
                row_width,
                profile.total_params,
                profile.main.gflops,
            )
        )
    return rows
