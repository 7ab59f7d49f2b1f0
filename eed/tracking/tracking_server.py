"""A tracking server of eed's own (``eed grid --server``): ``mlflow server`` over a sqlite database and
an artifact folder in one folder, started for a piece of work and stopped after it.

The runs stay in that folder: the same command starts the server on it again and finds them, and
``mlflow server --backend-store-uri sqlite:///<folder>/mlflow.db --artifacts-destination
<folder>/mlartifacts`` shows them in the UI. One process writes the database (the server), so the
folder may be on a shared file system, where sqlite written by many nodes at once is not safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from eed.errors import TrackingError
from eed.tracking.store import DEFAULT_ARTIFACTS, DEFAULT_DB, check_tracking_uri

LOOPBACK = ("127.0.0.1", "localhost")


def server_command(folder: Path) -> str:
    """The command that serves ``folder``'s store again (for the UI, after the work)."""
    return (
        f"mlflow server --backend-store-uri sqlite:///{folder / DEFAULT_DB} "
        f"--artifacts-destination {folder / DEFAULT_ARTIFACTS}"
    )


@contextlib.contextmanager
def tracking_server(folder: Path, host: str = "127.0.0.1", timeout_s: float = 600) -> Iterator[str]:
    """An ``mlflow server`` on a free port of ``host`` over ``folder``'s store; yields its URI
    (``http://host:port``) once it answers, stops it (and its workers) on the way out. A host other
    than loopback is listened on from every interface, for other machines (Slurm nodes) to reach."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    uri = f"http://{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / DEFAULT_DB}",
        "--artifacts-destination",
        str(folder / DEFAULT_ARTIFACTS),
        "--host",
        host if host in LOOPBACK else "0.0.0.0",
        "--port",
        str(port),
        "--workers",
        "1",
        # MLflow answers only requests addressed to loopback or private IPs unless told the name.
        "--allowed-hosts",
        ",".join(f"{name}:{port}" for name in dict.fromkeys([host, *LOOPBACK])),
    ]
    # Its job runner (a pool of consumer processes) is not needed for tracking.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = folder / "mlflow-server.log"
    with open(log, "a") as out:  # its own session: stopping it stops its workers too
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_it_answers(f"http://127.0.0.1:{port}", process, log, timeout_s)
        try:  # by the name the cells will use
            check_tracking_uri(uri)
        except TrackingError as error:
            raise TrackingError(
                f"{error}; the grid's server answers on 127.0.0.1:{port}, not by the name "
                f"{host!r} (another --server-host?)"
            ) from None
        yield uri
    finally:
        _stop(process, port)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _wait_until_it_answers(uri: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Return once ``uri``/health answers; a TrackingError with the log's last line if the server
    exits or stays silent for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    said = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    why = f"it exited with {process.returncode}" if process.poll() is not None else f"no answer in {timeout_s:.0f} s"
    raise TrackingError(
        f"the grid's mlflow server did not start on {uri} ({why}; {log}" + (f": {said[0]}" if said else "") + ")"
    )


def _stop(process: subprocess.Popen, port: int) -> None:
    """SIGTERM to the server's session, SIGKILL after 20 s; then wait until the port is free."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 20  # (a worker may outlive its parent for a moment)
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
