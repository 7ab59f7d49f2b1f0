"""The one error boundary: every `eed` command and every pipeline/ stage, given a bad input of
each kind that applies to it, prints ONE line on stderr (``error: …``), exits with the
documented code (eed/errors.py) and shows no traceback; EED_DEBUG=1 adds the traceback;
an unexpected exception keeps its traceback."""

from __future__ import annotations

import errno
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eed import errors
from eed.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "0123456789abcdef0123456789abcdef"
TINY = [
    "data.dataset=synthetic",
    "data.backend=tensor",
    "data.val_size=64",
    "data.train_subset=0",
    "data.synthetic.num_train=192",
    "data.synthetic.num_test=64",
    "model.width=4",
    "train.epochs=1",
    "train.batch_size=64",
    "train.device=cpu",
    "eval.rdm_samples=20",
    "eval.rdm_classes=3",
]


def assert_one_line(code: int, stderr: str, expected_code: int, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with tiny synthetic data prepared, a file where folders are expected,
    a garbage checkpoint, and a tracking store."""
    from eed.config import load_config
    from eed.stages.prepare import prepare

    folder = tmp_path_factory.mktemp("errors")
    overrides = [
        *TINY,
        f"data.prepared_dir={folder / 'prepared'}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"paths.out_dir={folder / 'outputs'}",
    ]
    prepare(load_config(None, overrides))
    (folder / "params.yaml").write_text("{}\n")  # a project (eed refuses to run outside one): the defaults
    (folder / "a-file").write_text("not a folder")
    (folder / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 40)
    (folder / "overrides.txt").write_text("\n".join(overrides))
    return folder


def overrides(project: Path, *extra: str) -> list[str]:
    args = []
    for item in [*(project / "overrides.txt").read_text().splitlines(), *extra]:
        args += ["--set", item]
    return args


# --------------------------------------------------------------------------- the commands


def cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


COMMAND_CASES = {
    # command: [(name, args after the command (project-relative placeholders), code, fragment)]
    "flops": [("config", ["resnet19"], 2, "ARCH: unknown architecture 'resnet19'")],
    "prepare": [
        ("config", ["--set", "loss.alpah=2"], 2, "unknown key 'loss.alpah'"),
        (
            "data",
            [
                "{tiny}",
                "--set",
                "data.dataset=imagenet",
                "--set",
                "model.arch=imagenet_resnet18",
                "--set",
                "data.root={project}/no-imagenet",
            ],
            3,
            "no-imagenet",
        ),
        ("os", ["{tiny}", "--set", "data.prepared_dir={project}/a-file/prepared"], 7, "Not a directory"),
    ],
    "train": [
        ("config", ["--set", "train.lr=[1"], 2, "train.lr"),
        ("data", ["{tiny}", "--set", "data.prepared_dir={project}/nothing"], 3, "no prepared synthetic data"),
        ("checkpoint", ["{tiny}", "--resume", "{project}/garbage.pt"], 4, "not a readable eed checkpoint"),
        ("tracking", ["{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"], 5, "does not exist"),
        (
            "non-finite",
            ["{tiny}", "--set", "train.lr=1e30", "--set", "tracking.enabled=false", "--out", "{project}/nan"],
            6,
            "non-finite loss",
        ),
        ("os", ["{tiny}", "--out", "{project}/a-file/train"], 7, "Not a directory"),
    ],
    "evaluate": [
        ("config", ["{project}/garbage.pt", "--split", "dev"], 2, "--split must be one of test, val"),
        ("checkpoint", ["{project}/garbage.pt", "{tiny}", "--no-log"], 4, "not a readable eed checkpoint"),
        ("source", [RUN_ID, "{tiny}"], 4, "neither a checkpoint file nor a run"),
        (
            "tracking",
            [RUN_ID, "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
        ("os", ["{project}/garbage.pt", "{tiny}", "--out", "{project}/a-file/evaluate"], 7, "Not a directory"),
    ],
    "export": [
        ("config", ["{project}/garbage.pt", "--checkpoint", "worst"], 2, "--checkpoint must be one of best, last"),
        ("config", ["{project}/garbage.pt", "{tiny}", "--set", "data.val_size=0"], 2, "data.val_size is 0"),
        ("checkpoint", ["{project}/garbage.pt", "{tiny}"], 4, "not a readable eed checkpoint"),
        ("source", [RUN_ID, "{tiny}"], 4, "neither a checkpoint file nor a run"),
        (
            "tracking",
            [RUN_ID, "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
    ],
    "register": [
        (
            "config",
            [RUN_ID, "--alias", "champion", "{tiny}", "--set", "tracking.enabled=false"],
            2,
            "tracking.enabled is false",
        ),
        ("tracking", [RUN_ID, "--alias", "champion", "{tiny}"], 5, f"no MLflow run '{RUN_ID}'"),
        (
            "tracking",
            [RUN_ID, "--alias", "champion", "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
    ],
    "serve": [
        ("config", ["models:/m-0", "--port", "0", "{tiny}"], 2, "--port must be 1..65535, got 0"),
        ("config", ["models:/m-0", "{tiny}", "--set", "tracking.enabled=false"], 2, "tracking.enabled is false"),
        ("tracking", [RUN_ID, "{tiny}"], 5, f"no MLflow run '{RUN_ID}'"),
        ("tracking", ["models:/m-0123", "{tiny}"], 5, "no model models:/m-0123 in sqlite:///"),
        (
            "tracking",
            [RUN_ID, "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
    ],
    "rdm": [
        ("config", ["{project}/garbage.pt", "--split", "dev"], 2, "--split must be one of test, val"),
        ("checkpoint", ["{project}/missing.pt", "{tiny}", "--no-log"], 4, "checkpoint not found"),
        (
            "tracking",
            [RUN_ID, "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
    ],
    "resolve": [
        ("config", ["--set", "train.epochs=0"], 2, "train.epochs"),
        ("os", ["{tiny}", "--out", "{project}/a-file/resolved.yaml"], 7, "Not a directory"),
    ],
    "report": [
        ("config", ["--set", "scale=gpu"], 2, "scale"),
        (
            "data",
            ["{tiny}", "--set", "paths.out_dir={project}/nothing"],
            3,
            "metrics.json is missing: run the evaluate stage first",
        ),
        ("os", ["{tiny}", "--out", "{project}/a-file/results.json"], 7, "Not a directory"),
    ],
    "grid": [
        ("config", ["-S", "method", "{tiny}"], 2, "-S 'method': expected KEY=VALUE"),
        ("config", ["-S", "method=eed,nope", "{tiny}"], 2, "nope"),
        ("config", ["-S", "seed=0", "--jobs", "0", "{tiny}"], 2, "--jobs 0 / --per-gpu 1: each must be at least 1"),
        (
            "tracking",
            ["-S", "seed=0", "{tiny}", "--set", "tracking.uri=sqlite:///{project}/missing/db.sqlite"],
            5,
            "does not exist",
        ),
        (
            "config",
            ["-S", "seed=0", "--server", "--tracking-uri", "sqlite:///x.db", "{tiny}"],
            2,
            "--server and --tracking-uri: the grid tracks into its own server or into yours, not both",
        ),
        (
            "tracking",
            ["-S", "seed=0", "--tracking-uri", "http://127.0.0.1:9", "{tiny}"],
            5,
            "MLflow tracking store 'http://127.0.0.1:9' is not reachable",
        ),
        (
            "tracking",
            ["-S", "seed=0", "--server", "--server-host", "203.0.113.1", "{tiny}"],
            5,
            "the grid's server answers on 127.0.0.1:",
        ),
    ],
    "paper": [
        ("config", ["--tag", "method", "{tiny}"], 2, "--tag 'method' must look like key=value"),
        ("tracking", ["no-such-experiment", "{tiny}"], 5, "no MLflow experiment 'no-such-experiment'"),
    ],
    "compare": [
        ("config", ["--tag", "method", "{tiny}"], 2, "--tag 'method' must look like key=value"),
        ("config", ["--against", "nope", "{tiny}"], 2, "--against"),
        ("tracking", ["no-such-experiment", "{tiny}"], 5, "no MLflow experiment 'no-such-experiment'"),
    ],
}


def expand(args: list[str], project: Path) -> list[str]:
    expanded = []
    for arg in args:
        if arg == "{tiny}":
            expanded += overrides(project)
        else:
            expanded.append(arg.replace("{project}", str(project)))
    return expanded


@pytest.mark.parametrize(
    ("command", "case"),
    [(command, case) for command, cases in COMMAND_CASES.items() for case in cases],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_each_command_reports_each_error_kind_in_one_line(command, case, project, monkeypatch):
    _name, args, code, fragment = case
    monkeypatch.chdir(project)  # no params.yaml here: the built-in defaults plus --set
    exit_code, stderr = cli([command, *expand(args, project)])
    assert_one_line(exit_code, stderr, code, fragment.replace("{project}", str(project)))


def test_every_command_has_error_cases():
    from eed.cli import app as application

    registered = {command.callback.__name__ for command in application.registered_commands}
    # `eed models` takes no input of its own that can be wrong (Click checks --width's range).
    assert registered - set(COMMAND_CASES) == {"models"}


# --------------------------------------------------------------------------- the pipeline stages


def write_params(folder: Path, project: Path, *extra: str) -> None:
    """params.yaml for a stage run in ``folder``: the tiny project's keys plus ``extra``."""
    from eed.config import load_config

    lines = [*(project / "overrides.txt").read_text().splitlines(), *extra]
    config = load_config(None, lines)
    data = config.model_dump()
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def run_stage_in_process(stage: str, folder: Path, capsys) -> tuple[int, str]:
    """``python pipeline/<stage>.py`` in ``folder``, in this process (the script's own code)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "pipeline" / f"{stage}.py"), run_name="__main__")
    return exited.value.code, capsys.readouterr().err


STAGE_CASES = {
    "prepare": [("os", ["data.prepared_dir={project}/a-file/prepared"], 7, "Not a directory")],
    "train": [
        ("data", ["data.prepared_dir={project}/nothing"], 3, "no prepared synthetic data"),
        ("tracking", ["tracking.uri=sqlite:///{project}/missing/db.sqlite"], 5, "does not exist"),
        ("non-finite", ["train.lr=1e30", "tracking.enabled=false", "paths.out_dir={folder}/out"], 6, "non-finite loss"),
        ("os", ["paths.out_dir={project}/a-file"], 7, "Not a directory"),
    ],
    "evaluate": [("checkpoint", ["paths.out_dir={folder}/empty", "tracking.enabled=false"], 4, "checkpoint not found")],
    "flops": [("data", ["data.prepared_dir={project}/nothing"], 3, "no prepared synthetic data")],
    "rdm": [("checkpoint", ["paths.out_dir={folder}/empty", "tracking.enabled=false"], 4, "checkpoint not found")],
}


@pytest.mark.parametrize(
    ("stage", "case"),
    [(stage, case) for stage, cases in STAGE_CASES.items() for case in cases],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_each_stage_reports_each_error_kind_in_one_line(stage, case, project, tmp_path, monkeypatch, capsys):
    _name, extra, code, fragment = case
    write_params(
        tmp_path, project, *(e.replace("{project}", str(project)).replace("{folder}", str(tmp_path)) for e in extra)
    )
    monkeypatch.chdir(tmp_path)
    exit_code, stderr = run_stage_in_process(stage, tmp_path, capsys)
    assert_one_line(exit_code, stderr, code, fragment)


@pytest.mark.parametrize("stage", sorted(STAGE_CASES))
def test_every_stage_rejects_a_bad_params_file_in_one_line(stage, tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("train:\n  lr: [0.1\n")  # not YAML
    monkeypatch.chdir(tmp_path)
    exit_code, stderr = run_stage_in_process(stage, tmp_path, capsys)
    assert_one_line(exit_code, stderr, 2, "params.yaml: not valid YAML")


def test_a_stage_as_dvc_runs_it_is_one_line_too(project, tmp_path):
    """The real entry point, in its own process: `python pipeline/train.py`."""
    write_params(tmp_path, project, f"data.prepared_dir={project}/nothing")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV},
    )
    assert_one_line(completed.returncode, completed.stderr, 3, "no prepared synthetic data")


# --------------------------------------------------------------------------- the boundary itself


def boundary_exit(error: BaseException, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited, errors.error_boundary():
        raise error
    return exited.value.code, capsys.readouterr().err


def test_signals_and_os_errors_have_their_codes(capsys):
    stopped = errors.TrainingInterrupted(
        "SIGTERM at epoch 2, step 3: checkpoint written to x/last.pt; re-run to resume",
        errors.EXIT_CODE_SIGNAL[signal.SIGTERM],
    )
    assert_one_line(*boundary_exit(stopped, capsys), 143, "SIGTERM at epoch 2")
    assert_one_line(*boundary_exit(KeyboardInterrupt(), capsys), 130, "interrupted")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/outputs/train/checkpoints/last.pt")
    assert_one_line(*boundary_exit(full, capsys), 7, "No space left on device: /data/outputs/train/checkpoints/")
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/outputs")
    assert_one_line(*boundary_exit(denied, capsys), 7, "Permission denied: /srv/outputs")
    multi = errors.ConfigError("params.yaml: train.lr: bad\nparams.yaml: loss.alpha: bad")
    assert_one_line(*boundary_exit(multi, capsys), 2, "train.lr: bad; params.yaml: loss.alpha: bad")


def test_eed_debug_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    code, stderr = boundary_exit(errors.DataError("no prepared data"), capsys)
    assert code == 3 and "Traceback" in stderr and stderr.rstrip().splitlines()[-1] == "error: no prepared data"


def test_unexpected_exceptions_keep_their_traceback():
    with pytest.raises(ZeroDivisionError), errors.error_boundary():
        _ = 1 / 0
