"""The official EED release's CIFAR ResNet-18 (github hjdw2/Exit-Ensemble-Distillation,
``resnet.py``) as an eed network: its parameter names mapped onto eed's.

The release writes its network out by hand: stem ``conv1``/``bn1`` (no ReLU after the BN),
``layer1``..``layer4`` of torchvision basic blocks, the main head ``linear``, and exit i as
``ex{i}conv{j}``/``ex{i}bn{j}`` (3x3 stride-2 conv + BN, ReLU between them) and
``ex{i}linear``. That is eed's ``resnet18`` at width 64 with ``stem_relu=False``, so a
state dict of the release loads into :func:`release_network` after :func:`convert_state_dict`
(tests/test_official.py checks that both networks then compute the same logits and features).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from eed.models.multi_exit import MultiExitNet
from eed.models.registry import create_model

RELEASE_ARCH, RELEASE_WIDTH = "resnet18", 64

_EXIT_LAYER = re.compile(r"ex(\d)(conv|bn)(\d)\.(.+)")
_EXIT_LINEAR = re.compile(r"ex(\d)linear\.(.+)")
_STAGE = re.compile(r"layer(\d)\.(.+)")


def eed_name(release_name: str) -> str:
    """The eed parameter (or buffer) name of one of the release's, e.g. ``ex2bn1.weight`` ->
    ``exits.1.convs.0.1.weight``; raises ``KeyError`` for a name the release's network has not."""
    if match := _EXIT_LAYER.fullmatch(release_name):
        exit_index, kind, layer, rest = match.groups()
        return f"exits.{int(exit_index) - 1}.convs.{int(layer) - 1}.{0 if kind == 'conv' else 1}.{rest}"
    if match := _EXIT_LINEAR.fullmatch(release_name):
        return f"exits.{int(match.group(1)) - 1}.fc.{match.group(2)}"
    if match := _STAGE.fullmatch(release_name):  # torchvision's BasicBlock names, as in the release
        return f"stages.{int(match.group(1)) - 1}.{match.group(2)}"
    head, _, rest = release_name.partition(".")
    renamed = {"conv1": "stem.0", "bn1": "stem.1", "linear": "fc"}
    if head in renamed and rest:
        return f"{renamed[head]}.{rest}"
    raise KeyError(f"{release_name!r} is not a parameter of the official release's ResNet-18")


def convert_state_dict(release_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's ``state_dict`` (e.g. ``torch.load("model_best.path.tar")["state_dict"]``)
    under eed's names, ready for ``release_network().load_state_dict``."""
    return {eed_name(name.removeprefix("module.")): tensor for name, tensor in release_state.items()}


def release_network(num_classes: int = 100) -> MultiExitNet:
    """eed's network with the release's architecture: ResNet-18 at width 64, exits after
    stages 1-3, the stem without its ReLU."""
    return create_model(RELEASE_ARCH, num_classes, RELEASE_WIDTH, stem_relu=False)
