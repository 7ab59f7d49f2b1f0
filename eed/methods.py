"""The training methods of the paper's Table I as one table of data.

Every method is one row of the same loss (:mod:`eed.objectives`):

    L = sum_i w_i * CE(Z_i, y)  +  sum_{i in S} [ alpha * l_z(Z_i, G_z) + beta * l_f(F_i, G_f) ]

A :class:`MethodSpec` says which classifiers get the cross entropy, which are students (S),
who the teacher is (G averages the teacher members' logits and features), and what it does
with ``beta``. Everything else is derived from the row: the config's validation, the
objective's plan and its one-line description, the loss keys ``eed compare`` reads for the
method, the methods bench times. A new method is one :func:`register_method` call.

Pure data: no torch, no config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

# Where the cross entropy goes: the main output only (no exits), or every classifier.
CrossEntropyOn = Literal["main", "all"]
# Who learns from the teacher: nobody, the exits, or every classifier (the main output too).
Students = Literal["none", "exits", "all"]
# The teacher: none, the main output alone, or the ensemble loss.teacher chooses (all by default).
Teacher = Literal["none", "main", "chosen"]
# What the method does with loss.beta: ignores it (no feature loss), needs it > 0, or takes any value.
FeatureLoss = Literal["unused", "required", "optional"]

# The loss.* keys of every method; a method reads the subset :attr:`MethodSpec.loss_keys` names.
LOSS_KEYS = ("output", "alpha", "beta", "temperature", "teacher")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str  # what it is and where it comes from, one line
    cross_entropy: CrossEntropyOn
    students: Students
    teacher: Teacher
    feature_loss: FeatureLoss

    def __post_init__(self) -> None:
        distills = self.students != "none"
        if distills != (self.teacher != "none"):
            raise ValueError(f"method {self.name!r}: students need a teacher and a teacher needs students")
        if not distills and self.feature_loss != "unused":
            raise ValueError(f"method {self.name!r}: a feature loss needs students")
        if self.cross_entropy == "main" and distills:
            raise ValueError(f"method {self.name!r}: a network without exits has no students")

    @property
    def exits(self) -> bool:
        """Whether it trains a multi-exit network (the baseline trains the backbone alone)."""
        return self.cross_entropy == "all"

    @property
    def distills(self) -> bool:
        return self.students != "none"

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The ``loss.*`` keys that change what this method trains (the others are ignored)."""
        if not self.distills:
            return ()
        keys = ["output", "alpha", "temperature"]
        if self.feature_loss != "unused":
            keys.append("beta")
        if self.teacher == "chosen":
            keys.append("teacher")
        return tuple(key for key in LOSS_KEYS if key in keys)


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


@contextlib.contextmanager
def registered(spec: MethodSpec) -> Iterator[MethodSpec]:
    """``spec`` registered for the block only (tests, experiments in a notebook)."""
    register_method(spec)
    try:
        yield spec
    finally:
        del _METHODS[spec.name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in the paper's order (then in registration order)."""
    return tuple(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; a ValueError naming the known methods otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(map(repr, _METHODS))}") from None


# The paper's Table I, in its order.
for _spec in (
    MethodSpec("baseline", "CE on the backbone's own output, no exits", "main", "none", "none", "unused"),
    MethodSpec("branchynet", "CE on every classifier (eq. 2, BranchyNet [22])", "all", "none", "none", "unused"),
    MethodSpec(
        "distill",
        "the exits learn the main output's logits (eq. 4 with beta = 0 [19])",
        "all",
        "exits",
        "main",
        "unused",
    ),
    MethodSpec(
        "byot",
        "the exits learn the main output's logits and features (eq. 4, BYOT [28])",
        "all",
        "exits",
        "main",
        "required",
    ),
    MethodSpec(
        "eed",
        "every classifier learns the ensemble of classifiers (eq. 8, exit-ensemble distillation)",
        "all",
        "all",
        "chosen",
        "optional",
    ),
):
    register_method(_spec)
del _spec
