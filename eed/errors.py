"""The project's errors, their exit codes, and the one boundary every command and stage runs in.

Every error eed raises for a cause the user can fix is an :class:`EedError` whose class says
the kind and so the exit code. At the boundary (:func:`error_boundary`, used by every ``eed``
command and every ``pipeline/`` stage) such an error, and an OS error the user caused
(permission denied, no space left, a missing file), prints ONE line on stderr and exits with
its code; ``EED_DEBUG=1`` adds the traceback. Anything else is a bug and keeps Python's
traceback.

===== ==============================================================
code  meaning
===== ==============================================================
2     bad configuration or usage (params.yaml, ``--set``, options)
3     data: missing, corrupt or mismatched dataset or prepared files
4     checkpoint: missing, unreadable, or not fitting the model/data
5     tracking: the MLflow store is unusable or lacks the asked-for runs
6     training diverged: the loss became NaN or infinite
7     operating system: permission denied, disk full, file not found
130   interrupted by SIGINT (Ctrl-C); in training, a checkpoint was written
143   stopped by SIGTERM (in training, a checkpoint was written)
===== ==============================================================
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

DEBUG_ENV = "EED_DEBUG"
EXIT_OS_ERROR = 7
EXIT_CODE_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class EedError(Exception):
    """An error with a cause the user can fix; the message says what and where."""

    exit_code = 1


class ConfigError(EedError, ValueError):
    """A configuration value, key or command-line option is invalid; the message names it."""

    exit_code = 2


class DataError(EedError, RuntimeError):
    """Missing, corrupt or mismatched data. The message says which file and what to do."""

    exit_code = 3


class CheckpointError(EedError, RuntimeError):
    """The file is missing, not an eed checkpoint, or does not fit the requested model."""

    exit_code = 4


class SourceError(CheckpointError):
    """A source to evaluate is neither a checkpoint file nor a tracked run holding one."""


class TrackingError(EedError, RuntimeError):
    """The MLflow tracking store cannot be used, or holds none of the runs asked for."""

    exit_code = 5


class NonFiniteLossError(EedError, FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch, step and terms."""

    exit_code = 6


class TrainingInterrupted(EedError, RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written. ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(EedError, RuntimeError):
    """SIGTERM arrived outside training (training checkpoints first: :class:`TrainingInterrupted`)."""

    exit_code = EXIT_CODE_SIGNAL[signal.SIGTERM]


def _stop(signum: int, frame) -> None:
    raise Stopped(f"stopped by {signal.Signals(signum).name}")


def one_line(error: BaseException) -> str:
    """``error: <message>`` on one line, whatever the message holds."""
    if isinstance(error, OSError) and not isinstance(error, EedError):
        where = " ".join(str(name) for name in (error.filename, error.filename2) if name)
        text = f"{error.strerror or type(error).__name__}{': ' + where if where else ''}"
        if not error.strerror:
            text += f" ({error})"
    elif isinstance(error, KeyboardInterrupt):
        text = "interrupted"
    else:
        text = str(error) or type(error).__name__
    return "error: " + "; ".join(line.strip() for line in text.splitlines() if line.strip())


def exit_code(error: BaseException) -> int:
    if isinstance(error, EedError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_CODE_SIGNAL[signal.SIGINT]
    return EXIT_OS_ERROR


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and their exit code.

    Plain stderr, not Rich: a path in the message must never be wrapped at 80 columns. SIGTERM
    becomes :class:`Stopped` (exit 143), so that ``finally`` blocks and runs end their work (a
    tracked run FAILED, a model being logged marked so) instead of the process vanishing.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main_thread else None
    try:
        yield
    except (EedError, OSError, KeyboardInterrupt) as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        sys.stderr.write(one_line(error) + "\n")
        sys.stderr.flush()
        raise SystemExit(exit_code(error)) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def guarded(command: F) -> F:
    """``command`` run inside :func:`error_boundary`; ``functools.wraps`` keeps its signature,
    which Typer reads for the options."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with error_boundary():
            return command(*args, **kwargs)

    return run  # type: ignore[return-value]
