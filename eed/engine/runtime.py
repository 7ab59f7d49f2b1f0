"""Where and how the computation runs: device, precision, memory layout, process group,
seeds and generator states.

The loaders (``eed.data``) and the trainer resolve ``train.device`` and
``train.channels_last`` through the same two functions (:mod:`eed.device`), so a batch and
the model always agree on both.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eed.config import TrainConfig
from eed.device import resolve_device, uses_channels_last
from eed.errors import ConfigError


@dataclass
class Runtime:
    """Where and how the computation runs: device, precision, layout, process group."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Under DDP, BN statistics drift per rank after the last step: take rank 0's."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device (CUDA when available unless told), precision and the DDP process group.

    torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; then NCCL joins CUDA processes and gloo CPU ones.
    """
    use_cuda = resolve_device(cfg.device).type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if use_cuda else "fp32")
    if precision == "fp16" and not use_cuda:
        raise ConfigError("train.precision 'fp16' needs CUDA; use 'fp32' or 'bf16' on CPU")
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Runtime(device, autocast_dtype, uses_channels_last(cfg.channels_last, device), rank, world_size)


def seed_everything(seed: int, deterministic: bool) -> None:
    seed %= 2**32  # seed + rank of the largest seed wraps into numpy's range
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    legacy = np.random.get_state(legacy=True)
    if not isinstance(legacy, tuple):  # a dict when np.random.set_bit_generator replaced MT19937
        raise RuntimeError("numpy's global generator is not MT19937; its state cannot be checkpointed")
    _, keys, position, has_gauss, cached_gaussian = legacy
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torchrun_command(argv: list[str]) -> list[str]:
    """What torchrun must run to repeat this process's command: the script itself (a
    ``pipeline/`` stage), or ``-m eed.cli …`` for the ``eed`` console script and ``python -m
    eed.cli``. Arguments after the interpreter, as torchrun takes them."""
    program = Path(argv[0])
    package = Path(__file__).resolve().parents[1]
    if program.suffix == ".py" and package not in program.resolve().parents:
        return [str(program), *argv[1:]]
    return ["-m", "eed.cli", *argv[1:]]


# The rendezvous id every machine of a run passes to torchrun: one constant, as a machine
# takes part in one training run at a time (the endpoint's port tells runs apart).
RDZV_ID = "eed"


def torchrun_options(cfg: TrainConfig) -> list[str]:
    """torchrun's options for ``cfg``: ``--standalone`` on one machine; across ``nnodes``
    machines a rendezvous at ``rdzv_endpoint``. The default static backend keeps ``node_rank``:
    machine ``node_rank`` runs the global ranks ``node_rank * nproc ...``, so machine 0 runs
    rank 0, which alone logs and writes outputs. torchrun's c10d backend ignores
    ``--node_rank`` (it is not passed) and numbers the machines itself."""
    if cfg.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={cfg.nproc}"]
    node_rank = [f"--node_rank={cfg.node_rank}"] if cfg.rdzv_backend == "static" else []
    return [
        f"--nnodes={cfg.nnodes}",
        *node_rank,
        f"--rdzv_backend={cfg.rdzv_backend}",
        f"--rdzv_endpoint={cfg.rdzv_endpoint}",
        f"--rdzv_id={RDZV_ID}",
        f"--nproc_per_node={cfg.nproc}",
    ]


def relaunch_under_torchrun(cfg: TrainConfig, argv: list[str] | None = None) -> None:
    """With ``nproc x nnodes > 1`` outside torchrun, replace this process by torchrun running
    the same command (``argv``, default ``sys.argv``) as ``cfg.nproc`` processes on this
    machine, joined with the other machines' when ``cfg.nnodes > 1`` (:func:`torchrun_options`)."""
    if cfg.nproc * cfg.nnodes <= 1 or "LOCAL_RANK" in os.environ:
        return
    command = torchrun_command(list(argv if argv is not None else sys.argv))
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *torchrun_options(cfg), *command])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
