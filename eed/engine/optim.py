"""The optimizer and the learning-rate schedule of a training run."""

from __future__ import annotations

import torch
from torch import nn

from eed.config import TrainConfig, require_resolved


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped once per optimisation step, whatever the schedule, so resume is uniform."""
    total = require_resolved(cfg.epochs, "train.epochs") * steps_per_epoch
    if cfg.schedule == "step":
        milestones = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    # One cycle: linear warm-up over the first quarter to lr, then linear decay to zero.
    # (A LambdaLR rather than OneCycleLR, which divides by zero on runs of a few steps.)
    warmup = max(1, total // 4)

    def one_cycle(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)
