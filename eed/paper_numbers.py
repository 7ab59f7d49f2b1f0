"""The numbers the paper reports, as data: its Tables I, II and IV (test accuracy, %) and
Table III (GFLOPs per output).

``eed/paper_numbers.yaml``, next to this module, holds them, typed from the paper's text
(Lee & Lee, "Students are the Best Teacher: Exit-Ensemble Distillation with Multi-Exits")
and checked against the numbers its prose quotes. Each accuracy entry names its table, the
paper's row label, and this project's dataset, arch, method and ``loss.*`` keys, so a run can
be set beside the paper's number for the same configuration (:func:`paper_accuracy`).

Only the methods table, the stdlib and pyyaml; no torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eed.methods import get_method, method_names

DATA_FILE = Path(__file__).with_name("paper_numbers.yaml")

OUTPUTS = ("exit1", "exit2", "exit3", "main")
DATASETS = ("cifar100", "imagenet")
# The networks of the paper's tables, by their names in the backbone registry (tests check they are there).
ARCHS = (
    "vgg19",
    "resnet18",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext29",
    "wrn28_10",
    "pyramidnet110_270",
    "imagenet_resnet18",
    "imagenet_resnet50",
)
OUTPUT_LOSSES = ("kl", "mse")
# What a left-out key means: an eed row without a teacher (Tables I, II) used all classifiers,
# as the config's ``loss.teacher: null`` does.
DEFAULTS = {"teacher": "all"}

_TOP_KEYS = ("source", "protocol", "accuracy", "gflops")
_ACCURACY_KEYS = ("table", "row", "dataset", "arch", "method", "loss", "percent")
_GFLOPS_KEYS = ("table", "arch", "gflops")


@dataclass(frozen=True)
class PaperAccuracy:
    table: str
    row: str  # the paper's row label, as printed
    dataset: str
    arch: str
    method: str
    loss: dict[str, Any]
    percent: dict[str, float]  # output -> test accuracy (%); outputs the network lacks are absent
    notes: str = ""


@dataclass(frozen=True)
class PaperGflops:
    table: str
    arch: str
    gflops: dict[str, float]  # output -> GFLOPs to obtain it


@dataclass(frozen=True)
class PaperNumbers:
    source: str
    protocol: str
    accuracy: tuple[PaperAccuracy, ...]
    gflops: tuple[PaperGflops, ...]


@functools.lru_cache(maxsize=1)
def load_paper_numbers() -> PaperNumbers:
    """The validated contents of ``eed/paper_numbers.yaml`` (read once)."""
    return load_paper_numbers_from(DATA_FILE)


def load_paper_numbers_from(path: str | Path) -> PaperNumbers:
    """Reads and validates a paper-numbers YAML; a ValueError naming the bad entry otherwise."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    _check_keys(data, _TOP_KEYS, (), path.name)
    return PaperNumbers(
        source=str(data["source"]),
        protocol=str(data["protocol"]),
        accuracy=tuple(_accuracy(raw, where) for where, raw in _entries(data, "accuracy", path)),
        gflops=tuple(_gflops(raw, where) for where, raw in _entries(data, "gflops", path)),
    )


def _entries(data: dict, section: str, path: Path) -> list[tuple[str, Any]]:
    """``(name for errors, raw entry)`` for each entry of a section's list."""
    if not isinstance(data[section], list):
        raise ValueError(f"{path.name}: {section} must be a list of entries")
    return [(_where(path, section, i, raw), raw) for i, raw in enumerate(data[section])]


def paper_accuracy(dataset: str, arch: str, method: str, loss: Mapping[str, Any]) -> list[PaperAccuracy]:
    """The paper's entries for this configuration. ``loss`` is compared on the keys each entry
    gives (plus the teacher of eed, default all classifiers), canonically: 1 == 1.0 == "1",
    "kl" == "KL", teachers as sorted lists of strings; other keys of ``loss`` are ignored."""
    return [
        entry
        for entry in load_paper_numbers().accuracy
        if (entry.dataset, entry.arch, entry.method) == (dataset, arch, method) and _matches(entry, loss)
    ]


def _matches(entry: PaperAccuracy, loss: Mapping[str, Any]) -> bool:
    keys = set(entry.loss) | {key for key in DEFAULTS if key in get_method(entry.method).loss_keys}
    return all(_canonical(_loss_value(entry.loss, key)) == _canonical(_loss_value(loss, key)) for key in keys)


def _loss_value(loss: Mapping[str, Any], key: str) -> Any:
    value = loss.get(key)
    return DEFAULTS.get(key) if value is None else value


def _canonical(value: Any) -> Any:
    """1, 1.0 and "1" -> "1"; "KL" -> "kl"; [3, "main"] -> ("3", "main")."""
    if isinstance(value, (list, tuple)):
        return tuple(sorted(_canonical(member) for member in value))
    if value is None:
        return None
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _accuracy(raw: Any, where: str) -> PaperAccuracy:
    _check_keys(raw, _ACCURACY_KEYS, ("notes",), where)
    _check_choice(raw["table"], ("I", "II", "IV"), "table", where)
    _check_choice(raw["dataset"], DATASETS, "dataset", where)
    _check_choice(raw["arch"], ARCHS, "arch", where)
    _check_choice(raw["method"], tuple(method_names()), "method", where)
    return PaperAccuracy(
        table=raw["table"],
        row=str(raw["row"]),
        dataset=raw["dataset"],
        arch=raw["arch"],
        method=raw["method"],
        loss=_checked_loss(raw["loss"], raw["method"], where),
        percent=_checked_outputs(raw["percent"], "percent", 0.0, 100.0, where),
        notes=str(raw.get("notes") or ""),
    )


def _gflops(raw: Any, where: str) -> PaperGflops:
    _check_keys(raw, _GFLOPS_KEYS, (), where)
    _check_choice(raw["table"], ("III",), "table", where)
    _check_choice(raw["arch"], ARCHS, "arch", where)
    return PaperGflops(
        table=raw["table"], arch=raw["arch"], gflops=_checked_outputs(raw["gflops"], "gflops", 0.0, math.inf, where)
    )


def _checked_loss(loss: Any, method: str, where: str) -> dict[str, Any]:
    _check_keys(loss, (), get_method(method).loss_keys, f"{where}: loss (method {method})")
    if "output" in loss:
        _check_choice(str(loss["output"]).lower(), OUTPUT_LOSSES, "loss.output", where)
    teacher = loss.get("teacher", "all")
    if teacher != "all" and not (
        isinstance(teacher, list) and teacher and all(m == "main" or _is_exit(m) for m in teacher)
    ):
        raise ValueError(f"{where}: loss.teacher {teacher!r} is not 'all' or a list of exits (1, 2, ...) and 'main'")
    return dict(loss)


def _is_exit(member: Any) -> bool:
    return isinstance(member, int) and not isinstance(member, bool) and member >= 1


def _checked_outputs(values: Any, key: str, low: float, high: float, where: str) -> dict[str, float]:
    _check_keys(values, (), OUTPUTS, f"{where}: {key}")
    if not values:
        raise ValueError(f"{where}: {key} names no output")
    for output, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{where}: {key}.{output} = {value!r} is not a number in {low:g}..{high:g}")
    return {output: float(value) for output, value in values.items()}


def _check_keys(mapping: Any, required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = [key for key in mapping if key not in required + optional]
    missing = [key for key in required if key not in mapping]
    problems = [
        f"{what} {', '.join(map(repr, keys))}"
        for what, keys in (("unknown key", unknown), ("missing key", missing))
        if keys
    ]
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)} (allowed: {', '.join(required + optional) or 'none'})")


def _check_choice(value: Any, allowed: tuple[str, ...], key: str, where: str) -> None:
    if value not in allowed:
        raise ValueError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")


def _where(path: Path, section: str, index: int, raw: Any) -> str:
    """``paper_numbers.yaml: accuracy[3] (table I, resnet18, 'CE (2)')``: names the entry in errors."""
    if not isinstance(raw, dict):
        return f"{path.name}: {section}[{index}]"
    label = ", ".join(str(raw[key]) for key in ("table", "arch") if key in raw)
    row = f", {raw['row']!r}" if "row" in raw else ""
    return f"{path.name}: {section}[{index}] (table {label}{row})"
