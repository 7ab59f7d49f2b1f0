"""The five objectives against hand-written references (explicit formulas, no module helpers),
the KL temperature scaling, the partial-L2 mask, detached teacher targets, teacher subsets and
configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from eed.config import Config, ConfigError, LossConfig
from eed.methods import method_names
from eed.models.backbone import Backbone
from eed.models.multi_exit import MultiExitNet, MultiExitOutput
from eed.objectives import ExitEnsembleObjective, partial_l2, plan_for

K, BATCH, CLASSES, DIM = 4, 6, 5, 8
NAMES = ["exit1", "exit2", "exit3", "main"]


def make_output(
    num_classifiers: int = K, seed: int = 0, dtype: torch.dtype = torch.float64, scale: float = 2.0
) -> tuple[MultiExitOutput, Tensor]:
    """Random leaf logits and features (features with negative entries, so the mask matters)."""
    generator = torch.Generator().manual_seed(seed)
    logits = [
        (scale * torch.randn(BATCH, CLASSES, generator=generator, dtype=torch.float64)).to(dtype).requires_grad_()
        for _ in range(num_classifiers)
    ]
    features = [
        torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
        for _ in range(num_classifiers)
    ]
    target = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    return MultiExitOutput(logits=logits, features=features), target


# --- independent references: explicit formulas, one classifier at a time -------------------


def ref_cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    log_normalizer = torch.log(torch.exp(z).sum(dim=1))
    return (log_normalizer - z[torch.arange(len(y)), y]).mean()


def ref_softmax(z: Tensor) -> Tensor:
    return torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)


def ref_kl(z: Tensor, g: Tensor, temperature: float) -> Tensor:
    p, q = ref_softmax(g / temperature), ref_softmax(z / temperature)
    return temperature**2 * (p * torch.log(p / q)).sum() / z.shape[0]


def ref_mse(z: Tensor, g: Tensor) -> Tensor:
    return ((z - g) ** 2).sum() / z.numel()


def ref_partial_l2(f: Tensor, g: Tensor) -> Tensor:
    total = torch.zeros((), dtype=f.dtype)
    for b in range(f.shape[0]):
        for d in range(f.shape[1]):
            if f[b, d] > 0 or g[b, d] > 0:
                total = total + (f[b, d] - g[b, d]) ** 2
    return total / f.numel()


def ref_output_loss(kind: str, z: Tensor, g: Tensor, temperature: float) -> Tensor:
    return ref_kl(z, g, temperature) if kind == "kl" else ref_mse(z, g)


def expected(
    method: str, output: MultiExitOutput, y: Tensor, loss: LossConfig, teacher_indices: list[int] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total and terms of each method written out from eqs. 2, 4 and 8 (0-based teacher indices)."""
    z = [t.detach() for t in output.logits]
    f = [t.detach() for t in output.features]
    k = len(z)
    names = [f"exit{i}" for i in range(1, k)] + ["main"]
    terms: dict[str, Tensor] = {}
    if method == "baseline":
        terms["ce_main"] = ref_cross_entropy(z[0], y)
        return terms["ce_main"], terms
    for i in range(k):  # eq. 2
        terms[f"ce_{names[i]}"] = ref_cross_entropy(z[i], y)
    total = sum(terms.values())
    if method == "branchynet":
        return total, terms
    if method in ("distill", "byot"):  # eq. 4: exits learn from the main output
        students, target_z, target_f = range(k - 1), z[-1], f[-1]
        beta = loss.beta if method == "byot" else 0.0
    else:  # eq. 8: everyone learns from the ensemble mean
        members = list(range(k)) if teacher_indices is None else teacher_indices
        students = range(k)
        target_z = sum(z[j] for j in members) / len(members)
        target_f = sum(f[j] for j in members) / len(members)
        beta = loss.beta
    if loss.alpha > 0:
        for i in students:
            terms[f"kd_{names[i]}"] = ref_output_loss(loss.output, z[i], target_z, loss.temperature)
            total = total + loss.alpha * terms[f"kd_{names[i]}"]
    if beta > 0:
        for i in students:
            terms[f"feat_{names[i]}"] = ref_partial_l2(f[i], target_f)
            total = total + beta * terms[f"feat_{names[i]}"]
    return total, terms


def assert_matches(result, total: Tensor, terms: dict[str, Tensor]) -> None:
    assert result.names == list(terms), "term keys or their order differ"
    for name, value in terms.items():
        torch.testing.assert_close(result.terms[name], value, msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(result.total, total)


# --- each method against the reference ------------------------------------------------------


@pytest.mark.parametrize("output_loss", ["kl", "mse"])
@pytest.mark.parametrize("method", method_names())
def test_method_matches_reference(method: str, output_loss: str) -> None:
    loss = LossConfig(output=output_loss, alpha=0.7, beta=1.3, temperature=2.5)
    k = 1 if method == "baseline" else K
    output, y = make_output(k, seed=1)
    result = ExitEnsembleObjective(method, loss, k)(output, y)
    assert_matches(result, *expected(method, output, y, loss))


def test_term_keys_per_method() -> None:
    loss = LossConfig(beta=1.0)
    keys = {m: ExitEnsembleObjective(m, loss, 1 if m == "baseline" else K).term_names for m in method_names()}
    ce = tuple(f"ce_{n}" for n in NAMES)
    assert keys["baseline"] == ("ce_main",)
    assert keys["branchynet"] == ce
    assert keys["distill"] == (*ce, "kd_exit1", "kd_exit2", "kd_exit3")  # beta ignored
    assert keys["byot"] == keys["distill"] + ("feat_exit1", "feat_exit2", "feat_exit3")
    assert keys["eed"] == ce + tuple(f"kd_{n}" for n in NAMES) + tuple(f"feat_{n}" for n in NAMES)


def test_distill_ignores_beta_and_records_it() -> None:
    output, y = make_output(seed=2)
    with_beta = ExitEnsembleObjective("distill", LossConfig(beta=5.0), K)
    without_beta = ExitEnsembleObjective("distill", LossConfig(beta=0.0), K)
    torch.testing.assert_close(with_beta(output, y).total, without_beta(output, y).total)
    assert with_beta.plan.beta == 0.0
    assert "β=0" in with_beta.describe()


def test_terms_are_detached_scalars() -> None:
    output, y = make_output(seed=3)
    result = ExitEnsembleObjective("eed", LossConfig(), K)(output, y)
    assert result.total.requires_grad and result.total.dim() == 0
    for value in result.terms.values():
        assert value.dim() == 0 and not value.requires_grad


# --- the KL term ------------------------------------------------------------------------------


def test_kl_is_scaled_by_temperature_squared() -> None:
    output, y = make_output(seed=4)
    z_exit, z_main = output.logits[0].detach(), output.logits[-1].detach()
    for temperature in (1.0, 4.0):
        loss = LossConfig(output="kl", alpha=1.0, temperature=temperature)
        kd = ExitEnsembleObjective("distill", loss, K)(output, y).terms["kd_exit1"]
        p, q = ref_softmax(z_main / temperature), ref_softmax(z_exit / temperature)
        unscaled = (p * (torch.log(p) - torch.log(q))).sum(dim=1).mean()
        torch.testing.assert_close(kd, temperature**2 * unscaled)


def test_kl_high_temperature_limit_is_logit_matching() -> None:
    # For T -> inf, T^2 KL -> sum_c (z_c - g_c)^2 / (2C) for zero-mean logits (Hinton et al.);
    # a missing T^2 would be off by a factor of 1e6 here.
    output, y = make_output(seed=5)
    for logit in output.logits:
        logit.data -= logit.data.mean(dim=1, keepdim=True)
    loss = LossConfig(output="kl", alpha=1.0, temperature=1000.0)
    kd = ExitEnsembleObjective("distill", loss, K)(output, y).terms["kd_exit2"]
    z, g = output.logits[1].detach(), output.logits[-1].detach()
    logit_matching = ((z - g) ** 2).sum(dim=1).mean() / (2 * CLASSES)
    torch.testing.assert_close(kd, logit_matching, rtol=1e-3, atol=0)


# --- the partial-L2 feature loss ---------------------------------------------------------------

STUDENT = torch.tensor([[1.0, -1.0, 0.0, 2.0], [-2.0, -1.0, 3.0, 0.0]], dtype=torch.float64)
TEACHER = torch.tensor([[0.0, 1.0, -1.0, -1.0], [-1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
# Counted where student > 0 or teacher > 0: (0,0): 1, (0,1): 4, (0,3): 9, (1,2): 4 -> 18 / 8.
# Left out: (0,2), (1,0), (1,1), (1,3), whose squared errors 1 + 1 + 1 + 0 plain MSE would add.
HAND_MADE_PARTIAL_L2 = 18.0 / 8.0
OUTSIDE_MASK = [(0, 2), (1, 0), (1, 1), (1, 3)]


def test_partial_l2_mask_on_hand_made_example() -> None:
    student = STUDENT.clone().requires_grad_()
    value = partial_l2(student.unsqueeze(0), TEACHER)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(HAND_MADE_PARTIAL_L2)
    assert value.item() != pytest.approx(((STUDENT - TEACHER) ** 2).mean().item())  # not plain MSE
    (gradient,) = torch.autograd.grad(value.sum(), student)
    for b, d in OUTSIDE_MASK:
        assert gradient[b, d] == 0, f"position {(b, d)} is outside the mask but got gradient"
    assert gradient[0, 0] == pytest.approx(2 * 1.0 / 8)  # 2 (s - t) / (B*D)


def test_partial_l2_through_byot() -> None:
    # Two classifiers: F_1 is the student, F_main the teacher.
    logits = [torch.zeros(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    output = MultiExitOutput(logits=logits, features=[STUDENT.clone().requires_grad_(), TEACHER.clone()])
    result = ExitEnsembleObjective("byot", LossConfig(alpha=1.0, beta=2.0), 2)(output, torch.tensor([0, 2]))
    assert result.terms["feat_exit1"].item() == pytest.approx(HAND_MADE_PARTIAL_L2)
    # Identical logits: CE is log(3) per classifier and the output distillation is zero.
    assert result.terms["kd_exit1"].item() == pytest.approx(0.0)
    assert result.total.item() == pytest.approx(2 * math.log(3) + 2.0 * HAND_MADE_PARTIAL_L2)


# --- no gradient through the teacher target --------------------------------------------------------


def ce_gradient(z: Tensor, y: Tensor) -> Tensor:
    onehot = torch.zeros_like(z)
    onehot[torch.arange(len(y)), y] = 1.0
    return (ref_softmax(z) - onehot) / z.shape[0]


@pytest.mark.parametrize("output_loss", ["kl", "mse"])
def test_eed_gradient_treats_ensemble_as_constant(output_loss: str) -> None:
    # With the target detached, dL/dZ_j = dCE_j/dZ_j + alpha * dl_z(Z_j, G)/dZ_j only; gradient
    # through G would add terms from every other student. A strict teacher subset makes those
    # terms non-zero for MSE too (with all k members they would cancel).
    temperature, alpha, beta = 2.0, 0.8, 1.5
    loss = LossConfig(output=output_loss, alpha=alpha, beta=beta, temperature=temperature, teacher=[1, "main"])
    output, y = make_output(seed=6)
    total = ExitEnsembleObjective("eed", loss, K)(output, y).total
    logit_grads = torch.autograd.grad(total, output.logits + output.features)
    z = [t.detach() for t in output.logits]
    f = [t.detach() for t in output.features]
    g_z, g_f = (z[0] + z[3]) / 2, (f[0] + f[3]) / 2
    for j in range(K):
        if output_loss == "kl":
            kd_grad = temperature * (ref_softmax(z[j] / temperature) - ref_softmax(g_z / temperature)) / BATCH
        else:
            kd_grad = 2 * (z[j] - g_z) / (BATCH * CLASSES)
        torch.testing.assert_close(logit_grads[j], ce_gradient(z[j], y) + alpha * kd_grad)
        mask = ((f[j] > 0) | (g_f > 0)).to(f[j].dtype)
        torch.testing.assert_close(logit_grads[K + j], beta * 2 * (f[j] - g_f) * mask / (BATCH * DIM))


@pytest.mark.parametrize("method", ["distill", "byot"])
def test_main_output_gets_only_its_cross_entropy_gradient(method: str) -> None:
    output, y = make_output(seed=7)
    total = ExitEnsembleObjective(method, LossConfig(output="kl", beta=1.0), K)(output, y).total
    grad_main_logits, grad_main_features = torch.autograd.grad(
        total, [output.logits[-1], output.features[-1]], allow_unused=True
    )
    torch.testing.assert_close(grad_main_logits, ce_gradient(output.logits[-1].detach(), y))
    # distill has no feature loss (None); byot's F_main is only a (detached) target (zeros).
    assert grad_main_features is None or torch.count_nonzero(grad_main_features) == 0


# --- teacher subsets (Table IV) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("teacher", "members"),
    [
        ([1, 3, "main"], [0, 2, 3]),
        ([1, "main"], [0, 3]),
        ([3, "main"], [2, 3]),
        ([1, 2, 3], [0, 1, 2]),
        (["main"], [3]),
        ([4], [3]),  # k names the main output too
        (["main", 2], [1, 3]),  # order does not matter
    ],
)
@pytest.mark.parametrize("output_loss", ["kl", "mse"])
def test_eed_teacher_subsets(teacher: list, members: list[int], output_loss: str) -> None:
    loss = LossConfig(output=output_loss, alpha=1.0, beta=1.0, teacher=teacher)
    output, y = make_output(seed=8)
    objective = ExitEnsembleObjective("eed", loss, K)
    assert objective.plan.teachers == tuple(members)
    assert_matches(objective(output, y), *expected("eed", output, y, loss, teacher_indices=members))


def test_eed_with_main_teacher_only_matches_distill_on_exits() -> None:
    output, y = make_output(seed=9)
    eed = ExitEnsembleObjective("eed", LossConfig(beta=0.0, teacher=["main"]), K)(output, y)
    distill = ExitEnsembleObjective("distill", LossConfig(), K)(output, y)
    assert eed.terms["kd_main"].item() == 0.0  # the main output is its own target
    for name in ("kd_exit1", "kd_exit2", "kd_exit3"):
        torch.testing.assert_close(eed.terms[name], distill.terms[name])
    torch.testing.assert_close(eed.total, distill.total)


def test_describe_names_the_ensemble() -> None:
    assert "mean(Z_1,Z_2,Z_3,Z_main)" in ExitEnsembleObjective("eed", LossConfig(output="mse"), K).describe()
    subset = ExitEnsembleObjective("eed", LossConfig(teacher=[1, 3, "main"]), K).describe()
    assert "mean(Z_1,Z_3,Z_main)" in subset and "partial-L2" in subset
    assert "Z_main" in ExitEnsembleObjective("byot", LossConfig(), K).describe()
    assert ExitEnsembleObjective("baseline", LossConfig(), 1).describe().startswith("baseline")


# --- configuration errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "loss", "k", "key", "also"),
    [
        ("kd", LossConfig(), K, "method", list(method_names())),
        ("baseline", LossConfig(), K, "method 'baseline' trains the network without exits", []),
        ("eed", LossConfig(), 1, "method", ["baseline"]),
        ("distill", LossConfig(teacher=["main"]), K, "loss.teacher", []),
        ("byot", LossConfig(teacher=[1, "main"]), K, "loss.teacher", []),
        ("branchynet", LossConfig(teacher=[1]), K, "loss.teacher", []),
        ("baseline", LossConfig(teacher=["main"]), 1, "loss.teacher", []),
        ("eed", LossConfig(teacher=[5]), K, "loss.teacher", ["allowed: 1, 2, 3, 'main'"]),
        ("eed", LossConfig(teacher=[4]), 3, "loss.teacher", ["allowed: 1, 2, 'main'"]),
        ("eed", LossConfig(teacher=[4, "main"]), K, "loss.teacher", []),  # the same classifier twice
        ("byot", LossConfig(beta=0.0), K, "loss.beta", []),
    ],
)
def test_bad_configuration_raises(method: str, loss: LossConfig, k: int, key: str, also: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        ExitEnsembleObjective(method, loss, k)
    for text in [key, *also]:
        assert text in str(error.value)


def test_baseline_rejects_multi_exit_output() -> None:
    output, y = make_output(K, seed=10)
    with pytest.raises(ConfigError, match="method 'baseline' trains the network without exits"):
        ExitEnsembleObjective("baseline", LossConfig(), 1)(output, y)


@pytest.mark.parametrize("method", ["byot", "eed"])
@pytest.mark.parametrize("features", [[], None])
def test_feature_loss_without_features_raises(method: str, features) -> None:
    output, y = make_output(seed=11)
    output = MultiExitOutput(logits=output.logits, features=features)
    with pytest.raises(ConfigError, match="loss.beta"):
        ExitEnsembleObjective(method, LossConfig(beta=1.0), K)(output, y)


def test_eed_without_feature_loss_needs_no_features() -> None:
    output, y = make_output(seed=12)
    bare = MultiExitOutput(logits=output.logits, features=[])
    result = ExitEnsembleObjective("eed", LossConfig(beta=0.0), K)(bare, y)
    assert not any(name.startswith("feat_") for name in result.names)


def test_from_config() -> None:
    config = Config(method="eed", loss=LossConfig(teacher=[1, "main"]))
    objective = ExitEnsembleObjective.from_config(config, K)
    assert objective.plan == plan_for("eed", config.loss, K)


# --- finite losses and backward through a real (tiny) multi-exit network ----------------------------


def tiny_net(exits: bool) -> MultiExitNet:
    def conv(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

    backbone = Backbone(
        stem=conv(3, 4, 1),
        stages=[conv(4, 4, 1), conv(4, 8, 2), conv(8, 8, 2)],
        stage_channels=[4, 8, 8],
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(8, CLASSES),
    )
    return MultiExitNet(backbone, exits=exits)


@pytest.mark.parametrize("output_loss", ["kl", "mse"])
@pytest.mark.parametrize("method", method_names())
def test_finite_and_backward_through_network(method: str, output_loss: str) -> None:
    torch.manual_seed(0)
    net = tiny_net(exits=method != "baseline")
    objective = ExitEnsembleObjective(method, LossConfig(output=output_loss), net.num_classifiers)
    result = objective(net(torch.randn(BATCH, 3, 8, 8)), torch.randint(0, CLASSES, (BATCH,)))
    assert torch.isfinite(result.total) and all(torch.isfinite(v) for v in result.terms.values())
    result.total.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_low_precision_logits_are_lifted_to_float32() -> None:
    output, y = make_output(seed=13, dtype=torch.bfloat16)
    result = ExitEnsembleObjective("eed", LossConfig(output="kl", alpha=1.0), K)(output, y)
    assert result.total.dtype == torch.float32
    lifted = MultiExitOutput(
        logits=[t.detach().double() for t in output.logits], features=[t.detach().double() for t in output.features]
    )
    reference, _ = expected("eed", lifted, y, LossConfig(output="kl", alpha=1.0))
    torch.testing.assert_close(result.total.double(), reference, rtol=1e-5, atol=1e-5)
