"""A one-node Slurm cluster on 127.0.0.1 for the tests: Debian's slurm-wlm and munge, munged with a
temporary key and socket, slurmctld and slurmd as root with a generated slurm.conf (non-default
ports, state and spool folders in a temporary folder). Clients find it through $SLURM_CONF."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DEBIAN_PACKAGES = ("slurm-wlm", "munge")


def install() -> None:
    """The Debian packages, where missing (the project's tests install what they use)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    root = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*root, "apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(
        [*root, "apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES],
        check=True,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`env` holds ``SLURM_CONF``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, cpus: int = 2) -> SlurmCluster:
        install()
        folder, host = self.folder, socket.gethostname()
        for name in ("munge", "state", "spool", "log"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / "munge").chmod(0o700)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = folder / "munge" / "munge.socket"
        self._start(
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={folder / 'munge' / 'munged.pid'}",
                f"--seed-file={folder / 'munge' / 'seed'}",
                f"--log-file={folder / 'log' / 'munged.log'}",
            ]
        )
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=eedtest",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    "SlurmUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={munge_socket}",
                    f"StateSaveLocation={folder / 'state'}",
                    f"SlurmdSpoolDir={folder / 'spool'}",
                    f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                    f"SlurmdPidFile={folder / 'slurmd.pid'}",
                    f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "JobCompType=jobcomp/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SwitchType=switch/none",
                    f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._wait_for(munge_socket)
        self._start(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._start(["slurmd", "-D", "-f", str(self.conf)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if state.returncode == 0 and state.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Slurm node never became idle; logs in {folder / 'log'}")

    def _start(self, command: list[str]) -> None:
        log = open(self.folder / "log" / f"{command[0]}.out", "w")  # noqa: SIM115 (the daemon writes it)
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait_for(self, path: Path, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} never appeared; logs in {self.folder / 'log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
