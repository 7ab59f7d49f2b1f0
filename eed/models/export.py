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


def servable(net: MultiExitNet, example: np.ndarray) -> tuple[AllClassifierLogits, np.ndarray, list[str]]:
    """A float32 CPU copy of ``net`` as :class:`AllClassifierLogits`, ``example`` (normalized
    float32 images, N x 3 x H x W: real ones, so the logged example shows what the model takes)
    and the pip requirements to load it."""
    wrapper = AllClassifierLogits(copy.deepcopy(net).cpu().float().eval())
    return (
        wrapper,
        np.ascontiguousarray(example, dtype=np.float32),
        [f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
