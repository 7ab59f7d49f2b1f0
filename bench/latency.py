"""8. The served model behind ``mlflow models serve`` over loopback: p50 and p99 latency of
single-image requests, eager vs compiled, at each fitted threshold and with the main output alone.

The model: the early_exit benchmark's (``--checkpoint PATH``, else the ``dvc repro`` model trained
once and cached), fitted on val as the evaluate stage fits it (``fit_early_exit``), logged by
``eed.inference.export.log_served_model`` into a throw-away sqlite store (as ``eed evaluate`` logs
it). For each mode the bench starts ``mlflow models serve -m models:/<id> --env-manager local`` on
127.0.0.1 (one uvicorn worker; ``SERVING_MODEL_CONFIG='{"compiled": false}'`` or ``true``, the
pyfunc's load-time option), waits for ``/ping``, and sends one image per request
(``{"inputs": [[32 × 32 × 3 pixels]], "params": {...}}``) from one ``requests`` session (keep-alive),
one request at a time, with the bench's torch threads (``OMP_NUM_THREADS``) and with one:
``--requests`` per variant after 10 untimed ones, variants interleaved round by
round (a bounded loop: every request has a 60 s timeout). The latency is the client's: send to
parsed answer. (What the answer alone costs in process: ``bench/run.py serving``, batch 1. Not timed
here: this process has computed with torch on its main thread, and a second thread computing beside it
would measure OpenMP's contention between the two, not the model; see BENCHMARKS.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.early_exit import add_model_arguments, trained_model

ROUNDS = 10  # variants interleaved in this many rounds, --requests / ROUNDS requests each


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per variant and mode (default 200)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _logged_model(trained, folder: Path) -> tuple[str, str, dict[str, float]]:
    """(tracking URI, model id, the served model's named thresholds): logged as ``eed evaluate`` logs it."""
    from mlflow.tracking import MlflowClient

    from eed.data import make_loader
    from eed.engine.checkpoint import Checkpoint
    from eed.engine.loops import collect_outputs
    from eed.inference.export import log_served_model, served_settings
    from eed.metrics.summary import summarize
    from eed.stages.evaluate import fit_early_exit

    cfg, model = trained.cfg, trained.model
    names = list(model.classifier_names())

    def collect(split: str):
        return collect_outputs(model, make_loader(cfg, split, train=False), "cpu")

    test = collect("test")
    report = summarize(test, names, "test", cfg.eval.ece_bins)
    fit_early_exit(model, test, names, cfg, "test", collect, report)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("bench", (folder / "artifacts").as_uri())).info.run_id
    model_id = log_served_model(uri, run_id, Checkpoint.load(trained.source["checkpoint"]), report, cfg, "test")
    from eed.data import read_split

    thresholds = served_settings(report, cfg, read_split(cfg, "test", indices=[0]))["thresholds"]
    return uri, model_id, thresholds


def _serve(uri: str, model_id: str, compiled: bool, threads: int, log: Path):
    """``mlflow models serve`` of the model on a free loopback port: (process, base URL) once /ping answers."""
    port = _free_port()
    # (the venv's bin first: mlflow runs uvicorn from PATH, as in an activated venv)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "OMP_NUM_THREADS": str(threads),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env["SERVING_MODEL_CONFIG"] = json.dumps({"compiled": compiled})  # the pyfunc's load-time option
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    process = subprocess.Popen(
        [
            mlflow,
            "models",
            "serve",
            "-m",
            f"models:/{model_id}",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                return process, base
        except requests.RequestException:
            pass
        time.sleep(1)
    _stop(process)
    raise RuntimeError(f"mlflow models serve did not answer /ping in 600 s: {log.read_text()[-2000:]}")


def _stop(process) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def _latencies(call, images: np.ndarray, variants: dict[str, dict], requests_each: int, gate) -> dict[str, list]:
    """Seconds per single-image call for each variant, interleaved over :data:`ROUNDS` rounds."""
    for params in variants.values():  # warm-up
        for i in range(10):
            call(images[i : i + 1], params)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, requests_each // ROUNDS)
    position = 0
    for round_index in range(ROUNDS):
        gate()
        for name in common.rotate(list(variants), round_index):
            for i in range(per_round):
                image = images[(position + i) % len(images)][None]
                seconds[name].append(common.timed(lambda: call(image, variants[name]))[0])
        position += per_round
    return seconds


def _rows(label: str, seconds: dict[str, list[float]]) -> list[common.Row]:
    rows = []
    for name, values in seconds.items():
        ms = 1000 * np.asarray(values)
        rows.append(
            common.Row(
                f"{label}, {name}: p50",
                common.Stat([float(np.percentile(ms, 50))]),
                "ms",
                note=f"p99 {np.percentile(ms, 99):.2f} ms, n = {len(ms)} requests",
            )
        )
        rows.append(common.Row(f"{label}, {name}: p99", common.Stat([float(np.percentile(ms, 99))]), "ms"))
    return rows


def run(args: argparse.Namespace) -> common.Result:
    import requests

    from eed.data import read_split

    started = common.now()
    trained = trained_model(args)
    threads, cfg = trained.threads, trained.cfg
    test = read_split(cfg, "test")
    images = test.images[:1000].permute(0, 2, 3, 1).numpy()
    gate = common.QuietGate(args.quiet_budget, args.quiet_threshold)
    rows: list[common.Row] = []
    details: dict = {"seconds": {}}
    with tempfile.TemporaryDirectory(prefix="eed-bench-latency-") as folder:
        uri, model_id, thresholds = _logged_model(trained, Path(folder))
        variants = {f"budget {name}" if name != "max_drop" else "max_drop": {"budget": name} for name in thresholds}
        variants["main only"] = {"threshold": 1.5}
        details["thresholds"] = thresholds

        session = requests.Session()
        for compiled, server_threads in [(c, n) for c in (False, True) for n in sorted({threads, 1}, reverse=True)]:
            mode = f"{'compiled' if compiled else 'eager'}, OMP_NUM_THREADS={server_threads}"
            log = Path(folder) / f"serve-{compiled}-{server_threads}.log"
            start_up, (process, base) = common.timed(lambda: _serve(uri, model_id, compiled, server_threads, log))
            rows.append(
                common.Row(
                    f"mlflow models serve, {mode}: start-up to the first /ping answer",
                    common.Stat([start_up]),
                    "s",
                    note="compiling at load" if compiled else "",
                )
            )
            try:

                def over_http(image: np.ndarray, params: dict) -> None:
                    reply = session.post(
                        f"{base}/invocations", json={"inputs": image.tolist(), "params": params}, timeout=60
                    )
                    reply.raise_for_status()
                    reply.json()

                seconds = _latencies(over_http, images, variants, args.requests, gate)
            finally:
                _stop(process)
            details["seconds"][f"mlflow models serve, {mode}"] = seconds
            rows += _rows(f"mlflow models serve, {mode}", seconds)
    return common.Result(
        name="latency",
        command=args.command_line,
        rows=rows,
        seconds=common.now() - started,
        gate=gate,
        settings={
            "threads": threads,
            "requests": args.requests,
            "rounds": ROUNDS,
            "train_subset": trained.subset,
            "epochs": trained.epochs,
            **trained.source,
        },
        details=details,
    )
