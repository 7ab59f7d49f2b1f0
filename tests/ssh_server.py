"""An SSH server on 127.0.0.1 for the tests: Debian's openssh-server, started on a free port with a host
key and an authorized key made for the test, its configuration and logs in a temporary folder (nothing of
the system's SSH configuration is read or changed). Installed where missing (the project's tests install
what they use)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DEBIAN_PACKAGES = ("openssh-server",)
SSHD = Path("/usr/sbin/sshd")


def install() -> str | None:
    """Install openssh-server where missing; the reason it cannot be, else None."""
    if SSHD.exists():
        return None
    if not shutil.which("apt-get"):
        return "openssh-server is not installed and this system has no apt-get to install it"
    root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if root and not shutil.which("sudo"):
        return "openssh-server is not installed, and installing it needs root (no sudo here)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES]):
        done = subprocess.run([*root, *command], capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            return f"installing openssh-server failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SshServer:
    """``sshd -D`` on 127.0.0.1:``port`` letting ``user`` (whoever runs the tests) in with ``key``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.user = getpass.getuser()
        self.key = folder / "client_key"
        self.process: subprocess.Popen | None = None

    def start(self) -> SshServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        host_key = self.folder / "host_key"
        for key in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.folder / "authorized_keys"
        authorized.write_text(Path(f"{self.key}.pub").read_text())
        authorized.chmod(0o600)
        config = self.folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:  # root's sshd separates privileges into this runtime folder (what the service makes)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = self.folder / "sshd.log"
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.port} in 30 s: {self.log.read_text()[-2000:]}")

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
