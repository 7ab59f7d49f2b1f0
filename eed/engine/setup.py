"""The one place a training set-up is built: :func:`build_training` turns a config into the
runtime, loaders, network, objective, optimizer and schedule that the trainer trains and that
every benchmark times, so that both always run the same network (initialisation, stem,
memory layout, DDP) on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from eed import data as eed_data
from eed.config import Config, require_resolved
from eed.data.catalog import Split
from eed.engine.checkpoint import Checkpoint, NetworkSpec, ResumeState
from eed.engine.optim import build_optimizer, build_scheduler
from eed.engine.runtime import Runtime, restore_rng_state, rng_state, seed_everything, setup_runtime
from eed.errors import CheckpointError
from eed.methods import get_method
from eed.models.from_config import resolve_architecture
from eed.models.multi_exit import MultiExitNet
from eed.objectives import ExitEnsembleObjective


@dataclass
class Setup:
    """Everything a training run trains with."""

    config: Config  # resolved: presets and the architecture's width filled in
    runtime: Runtime
    manifest: Any  # the prepared data's eed.data.Manifest
    network: NetworkSpec
    model: MultiExitNet  # the network itself (checkpoints, evaluation)
    train_model: nn.Module  # what the steps run: the network, under DDP and/or torch.compile
    objective: ExitEnsembleObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any  # eed.data.EpochLoader
    test_loader: Any
    val_loader: Any | None  # None when data.val_size is 0

    @property
    def classifier_names(self) -> list[str]:
        return self.model.classifier_names()

    def resume_state(self) -> ResumeState:
        return ResumeState(self.optimizer.state_dict(), self.scheduler.state_dict(), rng_state())

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: its weights, optimizer, schedule and generator states."""
        network = checkpoint.network
        if (network.arch, network.num_classes) != (self.network.arch, self.network.num_classes):
            raise CheckpointError(
                f"cannot resume a {network.arch} checkpoint with {network.num_classes} classes "
                f"into {self.network.arch} with {self.network.num_classes}"
            )
        if checkpoint.resume is None:
            raise CheckpointError(
                "the checkpoint holds no optimizer state (a deployable checkpoint): "
                "it cannot be resumed; start over with --resume never"
            )
        self.model.load_state_dict(checkpoint.weights)
        self.optimizer.load_state_dict(checkpoint.resume.optimizer)
        self.scheduler.load_state_dict(checkpoint.resume.scheduler)
        restore_rng_state(checkpoint.resume.rng)

    def close(self) -> None:
        if self.runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


def build_training(config: Config, runtime: Runtime | None = None) -> Setup:
    """The set-up of ``config``: the process group and device (``runtime``, when the caller has
    made it already), seeds (``seed + rank``), the train/test(/val) loaders, the network as
    configured (``model.init``, ``model.stem_relu``, channels_last on CUDA), the method's
    objective, SGD and the schedule."""
    config = resolve_architecture(config)
    runtime = runtime or setup_runtime(config.train)
    seed_everything(config.seed + runtime.rank, config.train.deterministic)
    manifest = eed_data.load_manifest(config)
    with_val = require_resolved(config.data.val_size, "data.val_size") > 0
    splits: tuple[Split, ...] = ("train", "test", *(("val",) if with_val else ()))
    loaders = {
        split: eed_data.make_loader(
            config,
            split,
            train=split == "train",
            device=runtime.device,
            distributed=runtime.distributed and split == "train",
        )
        for split in splits
    }
    network = NetworkSpec.of(config, manifest.class_names, exits=get_method(config.method).exits)
    model = network.build(init=config.model.init).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.train)
    train_model: nn.Module = model
    if runtime.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if config.train.compile:
        # typed as returning a callable; given a Module, it returns an OptimizedModule (a Module).
        train_model = cast(nn.Module, torch.compile(train_model))
    return Setup(
        config=config,
        runtime=runtime,
        manifest=manifest,
        network=network,
        model=model,
        train_model=train_model,
        objective=ExitEnsembleObjective(config.method, config.loss, model.num_classifiers),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.train, len(loaders["train"])),
        train_loader=loaders["train"],
        test_loader=loaders["test"],
        val_loader=loaders.get("val"),
    )
