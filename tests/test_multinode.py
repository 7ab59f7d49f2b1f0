"""One training run across several machines: the `train.nnodes`/`node_rank`/`rdzv_endpoint`
settings, the torchrun options they become, and two `eed train` "machines" on 127.0.0.1
(gloo, one process each) training one run together."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from eed.config import TrainConfig, is_training_key, load_config
from eed.engine import runtime
from eed.engine.checkpoint import Checkpoint
from eed.engine.trainer import train
from eed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.nnodes=2"], r"train\.rdzv_endpoint is required with train\.nnodes=2: host:port"),
        (
            ["train.nnodes=2", "train.node_rank=2", "train.rdzv_endpoint=host0:29400"],
            r"train\.node_rank=2 must be below train\.nnodes=2 \(machines are numbered 0\.\.1\)",
        ),
        (["train.node_rank=1"], r"train\.node_rank=1 must be below train\.nnodes=1"),
        (["train.nnodes=2", "train.rdzv_endpoint=host0"], r"train\.rdzv_endpoint: must look like host:port"),
        (["train.nnodes=2", "train.rdzv_endpoint=host0:70000"], r"train\.rdzv_endpoint: must look like host:port"),
        (["train.nnodes=2", "train.rdzv_endpoint=host 0:29400"], r"train\.rdzv_endpoint: must look like host:port"),
        (["train.nnodes=0"], r"train\.nnodes"),
        (["train.node_rank=-1"], r"train\.node_rank"),
    ],
)
def test_bad_node_settings_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_node_settings_that_load():
    assert load_config(None, []).train.nnodes == 1 and load_config(None, []).train.rdzv_endpoint is None
    for endpoint in ("host0:29400", "10.0.0.5:29400", "node-1.cluster.local:1", '"[::1]:29400"'):
        train_cfg = load_config(None, ["train.nnodes=3", "train.node_rank=2", f"train.rdzv_endpoint={endpoint}"]).train
        assert (train_cfg.nnodes, train_cfg.node_rank, train_cfg.rdzv_endpoint) == (3, 2, endpoint.strip('"'))


def test_only_the_machine_count_is_a_training_setting():
    # Runs whose machines were numbered or met differently are the same training run (resume,
    # `eed compare`); another machine count divides the global batch differently.
    assert is_training_key("train.nnodes") and is_training_key("train.nproc")
    assert not is_training_key("train.node_rank") and not is_training_key("train.rdzv_endpoint")
    assert not is_training_key("train.rdzv_backend")


def test_torchrun_options_standalone_on_one_machine_rendezvous_across_several():
    assert runtime.torchrun_options(TrainConfig(nproc=4)) == ["--standalone", "--nproc_per_node=4"]
    options = runtime.torchrun_options(TrainConfig(nproc=2, nnodes=3, node_rank=1, rdzv_endpoint="host0:29400"))
    assert options == [
        "--nnodes=3",
        "--node_rank=1",
        "--rdzv_backend=static",
        "--rdzv_endpoint=host0:29400",
        f"--rdzv_id={runtime.RDZV_ID}",
        "--nproc_per_node=2",
    ]
    elastic = runtime.torchrun_options(
        TrainConfig(nnodes=2, node_rank=1, rdzv_endpoint="host0:29400", rdzv_backend="c10d")
    )
    assert elastic == [
        "--nnodes=2",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=host0:29400",
        f"--rdzv_id={runtime.RDZV_ID}",
        "--nproc_per_node=1",
    ]  # c10d numbers the machines itself


def test_relaunch_whenever_more_than_one_process_takes_part(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(runtime.os, "execv", lambda program, args: calls.append(args))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = [str(Path(sys.executable).parent / "eed"), "train", "--set", "train.node_rank=1"]

    runtime.relaunch_under_torchrun(TrainConfig(), argv)
    assert calls == []  # one process in all: train in this one
    runtime.relaunch_under_torchrun(TrainConfig(nnodes=2, node_rank=1, rdzv_endpoint="host0:29400"), argv)
    assert calls == [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--node_rank=1",
            "--rdzv_backend=static",
            "--rdzv_endpoint=host0:29400",
            f"--rdzv_id={runtime.RDZV_ID}",
            "--nproc_per_node=1",
            "-m",
            "eed.cli",
            "train",
            "--set",
            "train.node_rank=1",
        ]
    ]
    runtime.relaunch_under_torchrun(TrainConfig(nproc=2), argv)
    assert calls[-1][3:5] == ["--standalone", "--nproc_per_node=2"]
    monkeypatch.setenv("LOCAL_RANK", "0")  # already a torchrun worker
    runtime.relaunch_under_torchrun(TrainConfig(nproc=2, nnodes=2, rdzv_endpoint="host0:29400"), argv)
    assert len(calls) == 2


# --------------------------------------------------------------------------- two machines

EPOCHS = 2
SETTINGS = {
    "data": {
        "dataset": "synthetic",
        "backend": "tensor",
        "val_size": 64,
        "num_workers": 1,
        "train_subset": 0,
        "synthetic": {"num_train": 384, "num_test": 96, "num_classes": 10},
    },
    "model": {"width": 4},
    "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05, "deterministic": True, "device": "cpu"},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(params: Path, node_rank: int, endpoint: str, out: Path, log: Path, backend: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "eed.cli",
        "train",
        "--params",
        str(params),
        "--set",
        "train.nnodes=2",
        "--set",
        f"train.node_rank={node_rank}",
        "--set",
        f"train.rdzv_backend={backend}",
        "--set",
        f"train.rdzv_endpoint={endpoint}",
        "--set",
        f"paths.out_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two machines share this one's cores
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def wait_all(nodes: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Wait for every node; when one fails (or time runs out), stop the others rather than
    leave them waiting for it."""
    deadline = time.monotonic() + timeout
    try:
        while any(node.poll() is None for node in nodes):
            if any(node.returncode not in (None, 0) for node in nodes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, f"{log.name} exited {node.returncode}:\n{log.read_text()[-4000:]}"


@pytest.mark.parametrize("backend", ["static", "c10d"])
def test_two_machines_train_one_run_with_the_steps_of_one_process(tmp_path, backend):
    """Two `eed train` commands, as two machines would run them (node ranks 0 and 1, one
    process each, gloo): one MLflow run, FINISHED; global rank 0 alone writes checkpoints and
    outputs (with the static rendezvous: machine 0); and as train.batch_size is the global
    batch, the run takes as many optimizer steps per epoch as one process does."""
    from eed.data import prepare

    db = tmp_path / "mlflow.db"
    settings = {
        **SETTINGS,
        "data": {**SETTINGS["data"], "prepared_dir": str(tmp_path / "prepared")},
        "tracking": {"uri": f"sqlite:///{db}"},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    prepare(load_config(params))  # both machines read the same prepared files here

    endpoint = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"node{rank}" for rank in (0, 1)]
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [start_node(params, rank, endpoint, outs[rank], logs[rank], backend) for rank in (0, 1)]
    wait_all(nodes, logs, timeout=1200)

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("eed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.nnodes"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == list(range(1, EPOCHS + 1))
    # Global rank 0's machine (machine 0 with the static rendezvous) has the outputs, the other none.
    first = 0 if backend == "static" else next(rank for rank in (0, 1) if (outs[rank] / "train").exists())
    other = 1 - first
    assert (outs[first] / "train" / "metrics.json").is_file()
    assert (
        not (outs[other] / "train" / "checkpoints").exists() and not (outs[other] / "train" / "metrics.json").exists()
    )
    assert "MLflow run:" in logs[first].read_text() and "MLflow run:" not in logs[other].read_text()

    # The scheduler steps once per optimizer step: its count is the run's number of steps.
    two_machines = Checkpoint.load(outs[first] / "train" / "checkpoints" / "last.pt")
    assert two_machines.epoch == EPOCHS and two_machines.run_id == runs[0].info.run_id
    one_process = train(load_config(params, ["tracking.enabled=false"]), tmp_path / "single", resume="never")
    steps = Checkpoint.load(one_process.last_checkpoint).resume.scheduler["last_epoch"]
    assert steps == EPOCHS * (320 // 64)
    assert two_machines.resume.scheduler["last_epoch"] == steps
