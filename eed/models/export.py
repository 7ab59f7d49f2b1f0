"""A tensor-in, tensor-out view of a multi-exit network, for serving and MLflow.

``torch.export`` (MLflow's default ``pt2`` format) needs plain tensor outputs, so the
logged model returns every classifier's logits stacked as ``(batch, k, classes)``,
index ``-1`` being the main output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eed.models.multi_exit import MultiExitNet


class AllClassifierLogits(nn.Module):
    def __init__(self, net: MultiExitNet):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return torch.stack(self.net(images).logits, dim=1)
