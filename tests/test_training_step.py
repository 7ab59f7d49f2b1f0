"""One optimisation step of every method on every registered backbone (reduced width,
tiny batch, CPU): forward and backward run and the loss is finite."""

import pytest
import torch

from eed.config import LossConfig
from eed.methods import method_names
from eed.models.registry import create_model, get_spec, list_backbones
from eed.objectives import ExitEnsembleObjective

# Narrow but topology-preserving widths (ResNeXt needs a multiple of 8).
TEST_WIDTH = {"wrn28_10": 16, "pyramidnet110_270": 8, "resnext29": 16}
# The ImageNet networks are fully convolutional: 64x64 keeps every stage at >= 2x2 and the step cheap.
TEST_INPUT = {"imagenet": 64, "cifar": 32}


@pytest.mark.parametrize("arch", list_backbones())
def test_one_step_of_every_method(arch):
    spec = get_spec(arch)
    torch.manual_seed(0)
    size = TEST_INPUT[spec.family]
    images, labels = torch.randn(2, 3, size, size), torch.tensor([1, 3])
    width = TEST_WIDTH.get(arch, 8) if spec.family == "cifar" else spec.default_width
    models = {exits: create_model(arch, num_classes=10, width=width, exits=exits) for exits in (False, True)}
    for method in method_names():
        model = models[method != "baseline"]
        objective = ExitEnsembleObjective(method, LossConfig(), model.num_classifiers)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        result = objective(model(images), labels)
        assert torch.isfinite(result.total), (arch, method, result.terms)
        optimizer.zero_grad()
        result.total.backward()
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        assert gradients and all(torch.isfinite(g).all() for g in gradients), (arch, method)
        optimizer.step()
        expected_terms = 1 if method == "baseline" else model.num_classifiers
        assert sum(name.startswith("ce_") for name in result.terms) == expected_terms
