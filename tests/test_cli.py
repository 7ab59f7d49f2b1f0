"""The `eed` command line: every command is registered, documents itself, and rejects bad
configuration with a message naming the key (exit code 2, nothing run)."""

import re
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
    result = subprocess.run(
        [str(Path(sys.executable).parent / "eed"), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
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
        "-m",
        "eed.cli",
        "train",
        "--set",
        "train.nproc=2",
    ]
    assert torchrun_command([str(ROOT / "eed" / "cli.py"), "train"]) == ["-m", "eed.cli", "train"]
    assert torchrun_command(["pipeline/train.py"]) == ["pipeline/train.py"]


# --------------------------------------------------------------------------- at 80 columns


def help_at_80(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_models_shows_every_name_whole_at_80_columns():
    """The name column is the value users type after --set model.arch=: never cut."""
    from eed.models.registry import list_backbones

    result = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in list_backbones():
        assert re.search(rf"^│ {re.escape(name)} +│", result.output, re.MULTILINE), (name, result.output)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_reflow_to_the_terminal(command):
    """The docstring's own line breaks are not kept: each paragraph fills the 80 columns, so only
    its last line may be short (a kept break shows as 'missing.' alone on a line)."""
    lines = help_at_80(command).splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    paragraphs = " ".join(line.strip() or "\n" for line in lines[start:end]).split("\n")
    body = [line.strip() for line in lines[start:end]]
    for i, line in enumerate(body[:-1]):
        if line and body[i + 1]:  # not the last line of its paragraph
            assert len(line) >= 60, (command, line, paragraphs)


def test_help_lists_the_choices_and_no_type_placeholders():
    evaluate, rdm, compare = help_at_80("evaluate"), help_at_80("rdm"), help_at_80("compare")
    for text in (evaluate, rdm):
        assert "test|val" in text and "best|last" in text
    assert "test|val|test_max" in compare
    for text in (evaluate, rdm, compare, help_at_80("train"), help_at_80("prepare"), help_at_80()):
        assert "<bool>" not in text and "<str>" not in text.partition("Options")[2]
        assert "<list[str]>" not in text.partition("Options")[2]
    assert "KEY=VALUE" in help_at_80("prepare")


def test_choices_are_the_stages_own():
    from eed.commands.common import Checkpoint, Split, TableSplit
    from eed.reporting.comparison import TABLE_SPLITS
    from eed.stages.common import CHECKPOINTS, SPLITS

    assert [c.value for c in Split] == list(SPLITS) and [c.value for c in Checkpoint] == list(CHECKPOINTS)
    assert [c.value for c in TableSplit] == list(TABLE_SPLITS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "x.pt", "--split", "dev"], "error: --split must be one of test, val, got 'dev'"),
        (["evaluate", "x.pt", "--checkpoint", "latest"], "error: --checkpoint must be one of best, last, got 'latest'"),
        (["rdm", "x.pt", "--split", "train"], "error: --split must be one of test, val, got 'train'"),
        (["rdm", "x.pt", "--checkpoint", "latest"], "error: --checkpoint must be one of best, last, got 'latest'"),
        (["compare", "--split", "max"], "error: --split must be one of test, val, test_max, got 'max'"),
    ],
)
def test_a_bad_choice_is_one_line_naming_the_choices(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside any project: the choice is checked before anything else
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == [message]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["modles"], "error: eed: No such command 'modles'. Did you mean 'models'? (see `eed --help`)"),
        (["train", "--widht", "3"], "error: eed train: No such option: --widht (see `eed train --help`)"),
        (["evaluate"], "error: eed evaluate: Missing argument 'source'. (see `eed evaluate --help`)"),
        (["register", "0123"], "error: eed register: Missing option '--alias'. (see `eed register --help`)"),
    ],
)
def test_a_usage_error_is_one_line_with_the_suggestion(args, line):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"}, prog_name="eed")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [line], result.stderr


def test_version_and_usage_lines():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"eed {version('eed')}"

    def usage(command: str) -> str:
        help_text = runner.invoke(app, [command, "--help"], prog_name="eed").stdout
        return next(line.strip() for line in help_text.splitlines() if "Usage:" in line)

    assert usage("evaluate") == "Usage: eed evaluate [OPTIONS] SOURCE"  # not Typer's {source}
    assert usage("export") == "Usage: eed export [OPTIONS] [SOURCE]"
    assert usage("serve") == "Usage: eed serve [OPTIONS] MODEL"
