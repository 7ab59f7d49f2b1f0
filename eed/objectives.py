"""The training objectives of the paper's Table I, as one loss configured by the method.

With k classifiers (exits 1..k-1, then the main output k), every method is a special case of

    L = sum_i w_i * CE(Z_i, y)  +  sum_{i in S} [ alpha * l_z(Z_i, G_z) + beta * l_f(F_i, G_f) ]

where S are the students and G_z, G_f the mean logits / features of the teacher members T.
Which classifiers get the CE, which are students and who teaches is each method's row of the
methods table (:mod:`eed.methods`); :func:`plan_for` turns a row and the loss config into an
:class:`ObjectivePlan`, and :class:`ExitEnsembleObjective` evaluates any plan with the same code.

l_z is ``T^2 * KL(softmax(G/T) || softmax(Z/T))`` (batchmean) or the MSE on logits; l_f is
the "partial L2" of the paper's ref. [8]: the squared error where the student or the
teacher feature is positive, summed and divided by B*D.

The official release weighs its KL l_z by 0.1 (its MSE l_z by 1) where the paper's text says
alpha = 1: ``reference: official`` makes alpha 0.1 for the KL loss (eed/config.py). It also
computes the KL as the soft cross entropy -sum(p_G log p_Z), which exceeds the KL by the
teacher's entropy: a constant of each step, so the gradients are the same
(tests/test_official.py checks both). Teacher targets are detached, as in
the official release: a classifier learns from the ensemble, it is not pulled by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eed.config import PAPER_ALPHA, Config, LossConfig, TeacherMember, check_method_loss
from eed.errors import ConfigError
from eed.methods import get_method, method_names
from eed.models.multi_exit import MultiExitOutput, classifier_names

OutputLoss = Literal["kl", "mse"]

# ---------------------------------------------------------------------------------------
# The plan: which terms a method has, derived from the config in one place
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectivePlan:
    """Everything that distinguishes one method's loss from another's.

    Classifier indices are 0-based (k-1 = main); ``alpha``/``beta`` are the effective
    weights (0 where the method has no such term, whatever the config says).
    """

    method: str
    classifier_names: tuple[str, ...]
    ce_weights: tuple[float, ...]  # one CE weight per classifier
    students: tuple[int, ...]  # classifiers that receive l_z / l_f
    teachers: tuple[int, ...]  # members averaged into G_z / G_f (sorted)
    alpha: float
    beta: float
    output_loss: OutputLoss
    temperature: float

    @property
    def num_classifiers(self) -> int:
        return len(self.classifier_names)

    @property
    def has_output_distillation(self) -> bool:
        return self.alpha > 0 and bool(self.students)

    @property
    def has_feature_distillation(self) -> bool:
        return self.beta > 0 and bool(self.students)

    @property
    def term_names(self) -> tuple[str, ...]:
        """Keys of :attr:`LossResult.terms`, in logging order: all CE, then l_z, then l_f."""
        names = [f"ce_{self.classifier_names[i]}" for i, w in enumerate(self.ce_weights) if w > 0]
        if self.has_output_distillation:
            names += [f"kd_{self.classifier_names[i]}" for i in self.students]
        if self.has_feature_distillation:
            names += [f"feat_{self.classifier_names[i]}" for i in self.students]
        return tuple(names)


def plan_for(method: str, loss: LossConfig, num_classifiers: int) -> ObjectivePlan:
    """The :class:`ObjectivePlan` of ``method`` (its row of :mod:`eed.methods`) for a network with
    ``num_classifiers`` outputs.

    Raises :class:`ConfigError` naming the offending key for a configuration the method
    cannot run with.
    """
    try:
        spec = get_method(method)
    except ValueError as error:
        raise ConfigError(f"method: {error}") from None
    if num_classifiers < 1:
        raise ValueError(f"num_classifiers must be >= 1, got {num_classifiers}")
    k = num_classifiers
    if not spec.exits and k != 1:
        raise ConfigError(_baseline_message(method, k))
    if spec.exits and k < 2:
        without_exits = [m for m in method_names() if not get_method(m).exits]
        raise ConfigError(
            f"method: method {method!r} trains a multi-exit network and needs at least "
            f"2 classifiers, got {k}; use method {' or '.join(map(repr, without_exits))} "
            "for a network without exits"
        )
    check_method_loss(method, loss)

    main = k - 1
    students = {"none": (), "exits": tuple(range(main)), "all": tuple(range(k))}[spec.students]
    teachers = {
        "none": (),
        "main": (main,),
        "chosen": tuple(range(k)) if loss.teacher is None else _resolve_teacher(loss.teacher, k),
    }[spec.teacher]
    # A loss config used without Config.resolved() (e.g. built directly) leaves alpha null.
    alpha = (PAPER_ALPHA if loss.alpha is None else loss.alpha) if spec.distills else 0.0
    beta = loss.beta if spec.feature_loss != "unused" else 0.0
    return ObjectivePlan(
        method=method,
        classifier_names=classifier_names(k),
        ce_weights=(1.0,) * k,
        students=students,
        teachers=teachers,
        alpha=alpha,
        beta=beta,
        output_loss=loss.output,
        temperature=loss.temperature,
    )


def _baseline_message(method: str, num_classifiers: int) -> str:
    multi_exit = ", ".join(m for m in method_names() if get_method(m).exits)
    return (
        f"method: method {method!r} trains the network without exits (1 classifier), but the network "
        f"has {num_classifiers} classifiers; build it with exits=False, or use one of the multi-exit "
        f"methods: {multi_exit}"
    )


def _resolve_teacher(teacher: Sequence[TeacherMember], num_classifiers: int) -> tuple[int, ...]:
    """``[1, 3, "main"]`` -> 0-based indices ``(0, 2, k-1)``; exits are 1..k-1, main is "main" or k."""
    k = num_classifiers
    allowed = ", ".join([str(i) for i in range(1, k)] + ["'main'"])
    indices: list[int] = []
    for member in teacher:
        if member == "main" or (isinstance(member, int) and not isinstance(member, bool) and member == k):
            index = k - 1
        elif isinstance(member, int) and not isinstance(member, bool) and 1 <= member < k:
            index = member - 1
        else:
            raise ConfigError(
                f"loss.teacher: {member!r} is not a classifier of this network "
                f"({k} classifiers); allowed: {allowed} ({k} also names 'main')"
            )
        if index in indices:
            raise ConfigError(
                f"loss.teacher: {teacher!r} names classifier {member!r} twice "
                f"('main' and {k} are the same); allowed: {allowed}"
            )
        indices.append(index)
    return tuple(sorted(indices))


def describe_plan(plan: ObjectivePlan) -> str:
    """One line saying what the loss computes, e.g. for logging and run descriptions."""
    k, spec = plan.num_classifiers, get_method(plan.method)
    if not spec.exits:
        return f"{plan.method}: CE on main (no exits)"
    text = f"{plan.method}: CE on {k} classifiers"
    symbols = ["main" if i == k - 1 else str(i + 1) for i in plan.teachers]
    teacher_z, teacher_f = (
        f"{letter}_{symbols[0]}" if len(symbols) == 1 else f"mean({','.join(f'{letter}_{s}' for s in symbols)})"
        for letter in "ZF"
    )
    if plan.has_output_distillation:
        if plan.output_loss == "kl":
            text += f" + {plan.alpha}·T²·kl(Z_i, {teacher_z}; T={plan.temperature})"
        else:
            text += f" + {plan.alpha}·mse(Z_i, {teacher_z})"
    if plan.has_feature_distillation:
        text += f" + {plan.beta}·partial-L2(F_i, {teacher_f})"
    if plan.has_output_distillation or plan.has_feature_distillation:
        students = [plan.classifier_names[i] for i in plan.students]
        text += f" for i in {students[0]}..{students[-1]}"
    if spec.distills and spec.feature_loss == "unused":
        text += f"; β=0 ({plan.method} has no feature loss; loss.beta is ignored)"
    elif spec.feature_loss == "optional" and plan.beta == 0:
        text += "; β=0"
    return text


# ---------------------------------------------------------------------------------------
# The distillation losses, batched over a leading "student" dimension
# ---------------------------------------------------------------------------------------


def output_distillation(student_logits: Tensor, target_logits: Tensor, kind: OutputLoss, temperature: float) -> Tensor:
    """l_z per student: ``student_logits`` (S, B, C) against ``target_logits`` (B, C) -> (S,).

    ``kl``: T^2 * KL(softmax(G/T) || softmax(Z/T)), summed over classes, averaged over the batch
    (T^2 keeps the gradient scale independent of T, as in Hinton et al.).
    ``mse``: squared error on the logits, averaged over batch and classes.
    """
    if kind == "kl":
        student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
        target_log_probs = F.log_softmax(target_logits / temperature, dim=-1)
        kl = (target_log_probs.exp() * (target_log_probs - student_log_probs)).sum(dim=-1)
        return kl.mean(dim=-1) * temperature**2
    if kind == "mse":
        return (student_logits - target_logits).pow(2).mean(dim=(-2, -1))
    raise ConfigError(f"loss.output: unknown output loss {kind!r}; allowed: kl, mse")


def partial_l2(student_features: Tensor, target_features: Tensor) -> Tensor:
    """l_f per student: ``student_features`` (S, B, D) against ``target_features`` (B, D) -> (S,).

    The squared error counts only where the student or the target is positive (ref. [8]):
    where both are non-positive, a following ReLU would see no difference. Summed over
    those positions and divided by all B*D elements.
    """
    squared_error = (student_features - target_features).pow(2)
    counted = (student_features > 0) | (target_features > 0)
    num_elements = student_features.shape[-2] * student_features.shape[-1]
    return torch.where(counted, squared_error, 0.0).sum(dim=(-2, -1)) / num_elements


def _in_loss_precision(values: Tensor) -> Tensor:
    # Losses in at least fp32: bf16/fp16 logits (autocast) lose too much in softmax and sums.
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


# ---------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------


@dataclass
class LossResult:
    """``total`` to backpropagate; ``terms`` holds each unweighted per-classifier loss (detached),
    so that ``total = sum(ce_*) + alpha * sum(kd_*) + beta * sum(feat_*)``."""

    total: Tensor
    terms: dict[str, Tensor]

    @property
    def names(self) -> list[str]:
        """Term keys in logging order: CE per classifier, then kd, then feat."""
        return list(self.terms)


class ExitEnsembleObjective(nn.Module):
    """The loss of any of the five methods; see the module docstring for how they differ."""

    def __init__(self, method: str, loss: LossConfig, num_classifiers: int):
        super().__init__()
        self.plan = plan_for(method, loss, num_classifiers)

    @classmethod
    def from_config(cls, config: Config, num_classifiers: int) -> ExitEnsembleObjective:
        return cls(config.method, config.loss, num_classifiers)

    @property
    def term_names(self) -> tuple[str, ...]:
        """The keys every :class:`LossResult` of this objective has, e.g. for log headers."""
        return self.plan.term_names

    def describe(self) -> str:
        return describe_plan(self.plan)

    def extra_repr(self) -> str:
        return self.describe()

    def forward(self, output: MultiExitOutput, target: Tensor) -> LossResult:
        plan = self.plan
        self._check_classifiers(output)
        names = plan.classifier_names
        terms: dict[str, Tensor] = {}

        # (k, B, C): all classifiers at once, one CE call for all of them.
        logits = _in_loss_precision(torch.stack(output.logits))
        k, batch_size = logits.shape[:2]
        ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(k), reduction="none")
        ce = ce.view(k, batch_size).mean(dim=1)
        total = (ce * ce.new_tensor(plan.ce_weights)).sum()
        for i, value in enumerate(ce.detach().unbind()):
            if plan.ce_weights[i] > 0:
                terms[f"ce_{names[i]}"] = value

        students, teachers = list(plan.students), list(plan.teachers)
        if plan.has_output_distillation:
            # The ensemble is a fixed target for this step: no gradient flows into G_z.
            ensemble_logits = logits[teachers].mean(dim=0).detach()
            kd = output_distillation(logits[students], ensemble_logits, plan.output_loss, plan.temperature)
            total = total + plan.alpha * kd.sum()
            terms.update((f"kd_{names[i]}", value) for i, value in zip(students, kd.detach().unbind()))

        if plan.has_feature_distillation:
            features = _in_loss_precision(torch.stack(self._checked_features(output)))
            ensemble_features = features[teachers].mean(dim=0).detach()
            feat = partial_l2(features[students], ensemble_features)
            total = total + plan.beta * feat.sum()
            terms.update((f"feat_{names[i]}", value) for i, value in zip(students, feat.detach().unbind()))

        return LossResult(total=total, terms=terms)

    def _check_classifiers(self, output: MultiExitOutput) -> None:
        found = len(output.logits)
        if found == self.plan.num_classifiers:
            return
        if not get_method(self.plan.method).exits:
            raise ConfigError(_baseline_message(self.plan.method, found))
        raise ValueError(
            f"objective for method {self.plan.method!r} was built for "
            f"{self.plan.num_classifiers} classifiers, but the output has {found}"
        )

    def _checked_features(self, output: MultiExitOutput) -> list[Tensor]:
        features = output.features
        if not features:
            raise ConfigError(
                f"loss.beta: method {self.plan.method!r} with beta = {self.plan.beta} adds the "
                "feature loss l_f(F_i, G_f), but the network output has no features; "
                "return F_1..F_k from the model, or set loss.beta = 0"
            )
        if len(features) != len(output.logits):
            raise ValueError(
                f"the output has {len(output.logits)} logits but {len(features)} features; "
                "the feature loss needs one F_i per classifier"
            )
        shapes = {tuple(f.shape) for f in features}
        if len(shapes) != 1:
            raise ValueError(f"the feature loss needs every F_i to have the same shape (B, D), got {sorted(shapes)}")
        return features
