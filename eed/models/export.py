"""A tensor-in, tensor-out view of a multi-exit network, for serving and MLflow.

``torch.export`` (MLflow's default ``pt2`` format) needs plain tensor outputs, so the
logged model returns every classifier's logits stacked as ``(batch, k, classes)``,
index ``-1`` being the main output.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from eed.models.multi_exit import MultiExitNet


class AllClassifierLogits(nn.Module):
    def __init__(self, net: MultiExitNet):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack(self.net(images).logits, dim=1)


def servable(net: MultiExitNet, input_size: int) -> tuple[AllClassifierLogits, np.ndarray, list[str]]:
    """A float32 CPU copy of ``net`` as :class:`AllClassifierLogits`, an input example of two
    normalized ``input_size`` images, and the pip requirements to load it."""
    wrapper = AllClassifierLogits(copy.deepcopy(net).cpu().float().eval())
    example = np.random.default_rng(0).standard_normal((2, 3, input_size, input_size)).astype(np.float32)
    return wrapper, example, [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
