"""The `eed` command line: every command is registered, documents itself, and rejects bad
configuration with a message naming the key (exit code 2, nothing run)."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eed.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["models", "flops", "prepare", "train", "evaluate", "rdm", "compare"]
runner = CliRunner()


def test_console_script_lists_every_command():
    result = subprocess.run([str(Path(sys.executable).parent / "eed"), "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_bad_override_names_the_key(command, tmp_path):
    result = runner.invoke(app, [command, "--params", str(ROOT / "params.yaml"), "--set", "loss.alpah=2"])
    assert result.exit_code == 2
    assert "loss.alpah" in result.output and "alpha" in result.output
    result = runner.invoke(app, [command, "--params", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_torchrun_reruns_the_same_command():
    """`train.nproc > 1` re-runs this very command under torchrun: the `eed` script and
    `python -m eed.cli` as the module, a pipeline stage as its script (arguments after the
    interpreter, as torchrun takes them)."""
    from eed.engine.runtime import torchrun_command

    assert torchrun_command([str(Path(sys.executable).parent / "eed"), "train", "--set", "train.nproc=2"]) == [
        "-m", "eed.cli", "train", "--set", "train.nproc=2"]
    assert torchrun_command([str(ROOT / "eed" / "cli.py"), "train"]) == ["-m", "eed.cli", "train"]
    assert torchrun_command(["pipeline/train.py"]) == ["pipeline/train.py"]
