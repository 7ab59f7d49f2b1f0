"""Shared by every benchmark: the prepared data, the config, timing statistics, the
machine description, Rich tables and the JSON written to ``bench/results/``.

Timing rules (these machines are shared and noisy: absolute times drift, ratios hold):

* compared variants run in the same process, interleaved (the order alternates from one
  round to the next), and each round gives one ratio; we report the median ratio over
  rounds with its min-max, never a ratio of separately taken averages;
* one-time costs (FFCV's JIT compile, DataLoader worker start, MLflow store creation) are
  paid in a warm-up before any timing;
* every variant of a benchmark runs with the same torch intra-op thread count (``--threads``).
  By default that is the count the project's own code leaves the process with once it has
  built a loader (see :func:`project_threads`), i.e. what ``eed train`` really runs with.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_PREPARED = RESULTS / "prepared"
SHARED_DATA = REPO.parent / "shared" / "data"

# torch's own choice before anything of the project (FFCV) touched it.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


# --------------------------------------------------------------------------- data and config


def data_root_env() -> None:
    """Point ``$EED_DATA_ROOT`` at ``../shared/data`` when it holds CIFAR-100 and the user
    set nothing, as the Makefile does."""
    if "EED_DATA_ROOT" not in os.environ and (SHARED_DATA / "cifar-100-python.tar.gz").is_file():
        os.environ["EED_DATA_ROOT"] = str(SHARED_DATA)


def config(prepared_dir: str | Path, *overrides: str):
    """params.yaml (the defaults of ``dvc repro``) with the prepared data in ``prepared_dir``,
    MLflow off, and ``overrides`` (``key=value``) applied."""
    from eed.config import load_config

    return load_config(
        REPO / "params.yaml",
        [f"data.prepared_dir={Path(prepared_dir).resolve()}", "tracking.enabled=false", *overrides],
    )


def ensure_prepared(prepared_dir: str | Path) -> Path:
    """The real CIFAR-100 prepared by the project's own ``eed.data.prepare`` into
    ``prepared_dir`` (written once; later runs only check the manifest)."""
    from rich.console import Console

    from eed.data import DataError, load_manifest, prepare

    prepared_dir = Path(prepared_dir).resolve()
    cfg = config(prepared_dir)
    try:
        load_manifest(cfg)
    except DataError:
        data_root_env()
        prepare(cfg, console=Console(stderr=True))
    return prepared_dir


def project_threads(prepared_dir: str | Path) -> int:
    """The torch intra-op thread count the project's process runs with once it has made a
    loader (``eed train`` and ``eed evaluate`` both do). The caller's count is put back."""
    from eed.data import make_loader

    saved = torch.get_num_threads()
    make_loader(config(prepared_dir), "test", train=False)
    found = torch.get_num_threads()
    torch.set_num_threads(saved)
    return found


def resolve_threads(requested: int | None, prepared_dir: str | Path) -> int:
    threads = requested or project_threads(prepared_dir)
    torch.set_num_threads(threads)
    return threads


def training_setup(cfg, threads: int | None = None, runtime=None):
    """The trainer's own set-up of ``cfg``: :func:`eed.engine.setup.build_training` (the resolved
    config, runtime, seeds, train/test(/val) loaders, the network as configured (``model.init``,
    ``model.stem_relu``, channels_last on CUDA), the method's objective, SGD and the schedule),
    so that a benchmark times the network the trainer trains. Every benchmark gets its model,
    optimizer, schedule, objective and loaders here. ``threads``: torch's intra-op thread count
    put back afterwards (building an FFCV loader changes it)."""
    from eed.engine.setup import build_training

    setup = build_training(cfg, runtime)
    if threads:
        torch.set_num_threads(threads)
    return setup


def objective_of(setup, method: str):
    """The objective ``build_training`` makes for ``method``, over ``setup``'s network (a method
    that trains the same network: exits or not alike), for benchmarks that compare methods on
    one model and optimizer."""
    from eed.methods import get_method
    from eed.objectives import ExitEnsembleObjective

    if get_method(method).exits != setup.network.exits:
        raise ValueError(f"method {method!r} trains another network than {setup.config.method!r}")
    if method == setup.config.method:
        return setup.objective
    return ExitEnsembleObjective(method, setup.config.loss, setup.model.num_classifiers)


# --------------------------------------------------------------------------- timing


def now() -> float:
    return time.perf_counter()


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _busy_jiffies() -> int:
    """CPU time (clock ticks) spent busy by the whole machine since boot."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def _own_jiffies() -> int:
    """CPU time (clock ticks) of this process, all threads, plus its waited-for children."""
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime


def others_cpu(window: float = 0.5) -> float:
    """Cores kept busy by other processes over the next ``window`` seconds (Linux only; 0 elsewhere)."""
    try:
        busy, own = _busy_jiffies(), _own_jiffies()
        time.sleep(window)
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, ((_busy_jiffies() - busy) - (_own_jiffies() - own)) / ticks / window)
    except (OSError, ValueError, IndexError):
        return 0.0


class QuietGate:
    """Before a timed round, wait (within a total budget) until other processes use less
    than ``threshold`` cores, so that neighbours' bursts land in as few rounds as possible.
    Records what it saw; rounds started while still busy are counted as ``noisy``."""

    def __init__(self, budget: float, threshold: float = 0.3):
        self.budget, self.threshold = budget, threshold
        self.waited = 0.0
        self.noisy = 0
        self.rounds = 0
        self.others: list[float] = []

    def __call__(self) -> None:
        self.rounds += 1
        if self.budget <= 0:
            return
        while True:
            load = others_cpu(0.25)
            if load < self.threshold or self.waited >= self.budget:
                break
            self.waited += 0.25
        self.others.append(round(load, 2))
        if load >= self.threshold:
            self.noisy += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold_cores": self.threshold,
            "budget_s": self.budget,
            "waited_s": round(self.waited, 1),
            "rounds": self.rounds,
            "noisy_rounds": self.noisy,
            "others_cores_at_start": self.others,
        }


def rotate(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` starting at a different one each round, so that no variant always runs first."""
    shift = round_index % len(items)
    return list(items[shift:]) + list(items[:shift])


def cycle_chunks(items: Sequence[Any], size: int):
    """Endless consecutive slices of ``size`` items, wrapping around: each round of a chunked
    benchmark times every variant on the same slice."""
    start = 0
    while True:
        chunk = [items[(start + i) % len(items)] for i in range(size)]
        start = (start + size) % len(items)
        yield chunk


@dataclass
class Stat:
    """Median and range of repeated measurements."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": len(self.values), "values": self.values}


@dataclass
class Row:
    """One line of a benchmark's table (and of BENCHMARKS.md)."""

    metric: str
    stat: Stat
    unit: str = ""
    target: str = ""  # e.g. ">= 5"
    met: bool | None = None  # None: no target
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            **self.stat.to_dict(),
        }


def check(stat: Stat, op: str, threshold: float) -> bool:
    """Whether the median meets ``op threshold`` (">=" or "<=")."""
    return stat.median >= threshold if op == ">=" else stat.median <= threshold


def target_row(metric: str, values: list[float], op: str, threshold: float, unit: str = "×", note: str = "") -> Row:
    stat = Stat(values)
    return Row(metric, stat, unit, f"{op} {threshold:g}", check(stat, op, threshold), note)


# --------------------------------------------------------------------------- machine


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import importlib.metadata as metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _lscpu_model(),
        "cores": cores,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "ffcv": version("ffcv"),
        "numba": version("numba"),
        "torch_default_threads": TORCH_DEFAULT_THREADS,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(),
        "load_average_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- output


@dataclass
class Result:
    name: str
    command: str
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)
    seconds: float = 0.0
    gate: QuietGate | None = None

    def to_dict(self) -> dict[str, Any]:
        info = dict(self.machine)
        info["load_average_end"] = list(os.getloadavg())
        return {
            "benchmark": self.name,
            "command": self.command,
            "machine": info,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
            "details": self.details,
            "quiet_gate": self.gate.to_dict() if self.gate else None,
            "wall_seconds": self.seconds,
        }


def fmt(value: float, unit: str) -> str:
    if unit in ("img/s",):
        return f"{value:,.0f}"
    if unit in ("MiB", "ms", "s"):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"
    if unit == "GFLOPs":
        return f"{value:.4f}"
    if unit == "%":
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(result: Result):
    from rich.table import Table

    m = result.machine
    out = Table(
        title=f"{result.name}: {m['cpu']}, {m['cores']} cores, torch threads "
        f"{result.settings.get('threads', '-')}, {m['date']}"
    )
    for column in ("metric", "median", "min–max", "unit", "target", "met?", "note"):
        out.add_column(column, justify="right" if column in ("median", "min–max") else "left", overflow="fold")
    for row in result.rows:
        met = "" if row.met is None else ("[green]yes" if row.met else "[red]NO")
        out.add_row(
            row.metric,
            fmt(row.stat.median, row.unit),
            f"{fmt(row.stat.min, row.unit)}–{fmt(row.stat.max, row.unit)}",
            row.unit,
            row.target,
            met,
            row.note,
        )
    return out


def report(result: Result, console=None) -> Path:
    """Print the table and write ``bench/results/<name>.json``."""
    from rich.console import Console

    console = console or Console()
    console.print(table(result))
    if result.gate is not None:
        g = result.gate
        console.print(
            f"[dim]{g.rounds} rounds; {g.noisy} started while other processes used ≥ {g.threshold} cores "
            f"(waited {g.waited:.0f} s of a {g.budget:.0f} s budget for quiet); load average "
            f"{os.getloadavg()[0]:.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result.name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    console.print(f"[dim]wrote {path.relative_to(REPO)} ({result.seconds:.0f} s)")
    return path
