"""Fidelity to the official release (github hjdw2/Exit-Ensemble-Distillation): its weight
initialisation, its network (parameters in its layout give the same logits and features in
eed's), and its loss under ``reference: official``.

The release's forward pass and loss are written below from its definitions (``resnet.py``,
``train.py``) in functional form, with its parameter names, independently of eed's modules.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eed.config import load_config
from eed.engine.checkpoint import Checkpoint, NetworkSpec, TrainState
from eed.models.initialization import init_weights
from eed.models.multi_exit import MultiExitOutput
from eed.models.official import convert_state_dict, eed_name, release_network
from eed.models.registry import create_model, get_spec, list_backbones
from eed.objectives import ExitEnsembleObjective

NUM_CLASSES = 100
WIDTH = 64  # the release's network has only its own width


# --------------------------------------------------------------------------- initialisation


def he_fan_out_std(conv: nn.Conv2d) -> float:
    kernel_h, kernel_w = conv.kernel_size
    return math.sqrt(2.0 / (kernel_h * kernel_w * conv.out_channels))


# Small widths keep the wide CIFAR networks cheap to build; the std depends only on each conv's shape.
SMALL_WIDTH = {"resnext29": 64, "wrn28_10": 16, "pyramidnet110_270": 16}


@pytest.mark.parametrize("arch", [a for a in list_backbones() if get_spec(a).family == "cifar"])
def test_every_conv_and_norm_is_initialised_he_fan_out(arch):
    torch.manual_seed(0)
    width = SMALL_WIDTH.get(arch, 16 if arch != "resnet18" else 64)
    net = create_model(arch, NUM_CLASSES, width)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert any(conv in set(net.exits.modules()) for conv in convs)  # exits are covered too
    for conv in convs:
        if conv.weight.numel() >= 4096:  # enough draws for a 5% tolerance on the std
            assert conv.weight.std().item() == pytest.approx(he_fan_out_std(conv), rel=0.05), conv
        assert conv.weight.mean().abs().item() < 4 * he_fan_out_std(conv) / math.sqrt(conv.weight.numel())
    for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_resnet18_3x3_convs_have_the_release_std_not_pytorch_default():
    """The issue's numbers: ResNet-18's 64-wide 3x3 convs at std ~0.059 (He fan-out) vs
    ~0.024 (PyTorch's default, what `model.init: pytorch` keeps)."""
    torch.manual_seed(0)
    he = create_model("resnet18", NUM_CLASSES, WIDTH).stages[0][0].conv1.weight
    default = create_model("resnet18", NUM_CLASSES, WIDTH, init="pytorch").stages[0][0].conv1.weight
    assert he.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.03)  # 0.0589
    assert default.std().item() == pytest.approx(1 / math.sqrt(3 * 9 * 64), rel=0.03)  # 0.0241


def test_init_weights_rejects_an_unknown_scheme():
    with pytest.raises(ValueError, match="allowed: he_fan_out, pytorch"):
        init_weights(nn.Conv2d(1, 1, 3), "xavier")


# --------------------------------------------------------------------------- the release's network


def release_shapes(num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of the release's ResNet-18, named as it names them."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, c_in, c_out, k=3):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)

    def bn(name, c):
        shapes.update(
            {
                f"{name}.weight": (c,),
                f"{name}.bias": (c,),
                f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,),
                f"{name}.num_batches_tracked": (),
            }
        )

    def linear(name, c_in):
        shapes.update({f"{name}.weight": (num_classes, c_in), f"{name}.bias": (num_classes,)})

    conv("conv1", 3, 64), bn("bn1", 64)
    c_in = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            conv(f"{prefix}.conv1", c_in, planes), bn(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2", planes, planes), bn(f"{prefix}.bn2", planes)
            if block == 0 and c_in != planes:
                conv(f"{prefix}.downsample.0", c_in, planes, k=1), bn(f"{prefix}.downsample.1", planes)
            c_in = planes
    linear("linear", 512)
    for exit_index, widths in ((1, (64, 128, 256, 512)), (2, (128, 256, 512)), (3, (256, 512))):
        for layer, (a, b) in enumerate(itertools.pairwise(widths), start=1):
            conv(f"ex{exit_index}conv{layer}", a, b), bn(f"ex{exit_index}bn{layer}", b)
        linear(f"ex{exit_index}linear", 512)
    return shapes


def random_release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Parameters and BN statistics far from the defaults, so that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in release_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith(".weight") and len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(2 / fan_out)
        elif name.endswith(".weight") and len(shape) == 1:  # BN scales around 1, residual branches not negligible
            state[name] = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1
    return state


def release_forward(p: dict[str, torch.Tensor], x: torch.Tensor, training: bool = False):
    """The release's ResNet.forward in functional form: ``(Z_main, Z_1, Z_2, Z_3, F_main, F_1, F_2, F_3)``."""

    def conv(h, name, stride=1):
        weight = p[f"{name}.weight"]
        return F.conv2d(h, weight, stride=stride, padding=weight.shape[-1] // 2)

    def bn(h, name):
        # A copy of the running statistics: the reference must not move the ones the eed net loads.
        return F.batch_norm(
            h,
            p[f"{name}.running_mean"].clone(),
            p[f"{name}.running_var"].clone(),
            p[f"{name}.weight"],
            p[f"{name}.bias"],
            training=training,
            eps=1e-5,
        )

    def block(h, prefix, stride):
        out = F.relu(bn(conv(h, f"{prefix}.conv1", stride), f"{prefix}.bn1"))
        out = bn(conv(out, f"{prefix}.conv2"), f"{prefix}.bn2")
        shortcut = h
        if f"{prefix}.downsample.0.weight" in p:
            shortcut = bn(conv(h, f"{prefix}.downsample.0", stride), f"{prefix}.downsample.1")
        return F.relu(out + shortcut)

    def exit_branch(h, index, convs):
        for layer in range(1, convs + 1):
            h = bn(conv(F.relu(h), f"ex{index}conv{layer}", stride=2), f"ex{index}bn{layer}")
        feature = F.avg_pool2d(F.relu(h), 4).flatten(1)
        return F.linear(feature, p[f"ex{index}linear.weight"], p[f"ex{index}linear.bias"]), feature

    h = bn(conv(x, "conv1"), "bn1")  # no ReLU after the stem's BN
    exits = []
    for layer in range(1, 5):
        for block_index in range(2):
            h = block(h, f"layer{layer}.{block_index}", 2 if layer > 1 and block_index == 0 else 1)
        if layer < 4:
            exits.append(exit_branch(h, layer, 4 - layer))
    feature = F.avg_pool2d(F.relu(h), 4).flatten(1)
    logits = F.linear(feature, p["linear.weight"], p["linear.bias"])
    return (logits, *(z for z, _ in exits), feature, *(f for _, f in exits))


def test_every_release_name_maps_onto_one_eed_name():
    eed_state = release_network().state_dict()
    mapped = [eed_name(name) for name in release_shapes()]
    assert sorted(mapped) == sorted(eed_state)  # one to one, nothing left over on either side
    for name, shape in release_shapes().items():
        assert tuple(eed_state[eed_name(name)].shape) == shape, name
    with pytest.raises(KeyError, match="not a parameter"):
        eed_name("fc.weight")  # eed's name, not the release's


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-mode BN"])
def test_release_parameters_give_the_release_logits_and_features(training):
    state = random_release_state()
    net = release_network()
    net.load_state_dict(convert_state_dict(state), strict=True)
    net.train(training)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net(images)
        theirs = release_forward(state, images, training)
    z_main, z1, z2, z3, f_main, f1, f2, f3 = theirs
    for mine, reference in zip(ours.logits + ours.features, [z1, z2, z3, z_main, f1, f2, f3, f_main]):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)


def test_the_default_stem_relu_is_a_different_network():
    """The check above can fail: with the ReLU after the stem, the same weights give other logits."""
    state = convert_state_dict(random_release_state())
    with_relu = create_model("resnet18", NUM_CLASSES, WIDTH)
    with_relu.load_state_dict(state)  # same names: only the forward differs
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = with_relu.eval()(images), release_forward(random_release_state(), images)
    relative_difference = (ours.features[-1] - theirs[4]).abs().max() / theirs[4].abs().max()
    assert relative_difference > 0.05


def test_checkpoints_remember_the_stem(tmp_path):
    net = release_network(10)
    checkpoint = Checkpoint(
        NetworkSpec("resnet18", 10, WIDTH, True, stem_relu=False), net.state_dict(), {}, TrainState()
    )
    rebuilt = Checkpoint.load(checkpoint.save(tmp_path / "release.pt")).model()
    assert isinstance(rebuilt.stem[2], nn.Identity)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images).main, net.eval()(images).main)
    # A version-2 file written before the option: the stem it had, with its ReLU.
    older = {
        "format": "eed-checkpoint",
        "version": 2,
        "arch": "resnet18",
        "num_classes": 10,
        "width": WIDTH,
        "exits": True,
        "model": net.state_dict(),
    }
    torch.save(older, tmp_path / "older.pt")
    assert isinstance(Checkpoint.load(tmp_path / "older.pt").model().stem[2], nn.ReLU)


# --------------------------------------------------------------------------- the release's loss


def release_loss(logits, features, target, output_loss, temperature):
    """train.py's total loss with EED on: CE of all four outputs; the outputs against the
    detached mean of all four (KL path: 0.1 * T^2 * soft cross entropy; MSE path: unscaled);
    the features against the detached mean feature, partial L2 (mean over all elements)."""
    z_main, z1, z2, z3 = logits
    f_main, f1, f2, f3 = features
    outputs, feats = [z1, z2, z3, z_main], [f1, f2, f3, f_main]
    total = sum(F.cross_entropy(z, target) for z in outputs)
    target_logits = sum(z / 4 for z in outputs).detach()
    target_feature = sum(f / 4 for f in feats).detach()
    if output_loss == "kl":
        soft = torch.softmax(target_logits / temperature, dim=1)
        soft_ce = [
            -(torch.log_softmax(z / temperature, dim=1) * soft).sum(dim=1).mean() * temperature**2 for z in outputs
        ]
        total = total + 0.1 * sum(soft_ce)
    else:
        total = total + sum(F.mse_loss(z, target_logits) for z in outputs)
    for f in feats:
        mask = ((f > 0) | (target_feature > 0)).float()
        total = total + ((f - target_feature) ** 2 * mask).abs().mean()
    return total, target_logits


@pytest.mark.parametrize("output_loss", ["kl", "mse"])
def test_reference_official_loss_equals_the_release_loss(output_loss):
    config = load_config(None, ["reference=official", f"loss.output={output_loss}"])
    assert config.loss.alpha == (0.1 if output_loss == "kl" else 1.0)
    generator = torch.Generator().manual_seed(2)
    batch, classes, dim, temperature = 16, 100, 512, config.loss.temperature
    logits = [torch.randn(batch, classes, generator=generator) * 3 for _ in range(4)]  # exit1..3, main
    features = [torch.relu(torch.randn(batch, dim, generator=generator)) for _ in range(4)]
    target = torch.randint(0, classes, (batch,), generator=generator)

    ours_z = [z.clone().requires_grad_() for z in logits]
    ours_f = [f.clone().requires_grad_() for f in features]
    objective = ExitEnsembleObjective.from_config(config, 4)
    ours = objective(MultiExitOutput(logits=ours_z, features=ours_f), target).total
    ours.backward()

    their_z = [z.clone().requires_grad_() for z in logits]
    their_f = [f.clone().requires_grad_() for f in features]
    order = [3, 0, 1, 2]  # the release returns main first
    theirs, target_logits = release_loss(
        [their_z[i] for i in order], [their_f[i] for i in order], target, output_loss, temperature
    )
    theirs.backward()

    expected = ours.detach()
    if output_loss == "kl":
        # eed's l_z is the KL divergence; the release's is the soft cross entropy, which adds the
        # teacher's entropy: a constant of the step (no gradient), 0.1 * T^2 * H per student.
        soft = torch.softmax(target_logits / temperature, dim=1)
        entropy = -(soft * torch.log(soft)).sum(dim=1).mean()
        expected = expected + 0.1 * temperature**2 * 4 * entropy
    torch.testing.assert_close(expected, theirs.detach(), rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours_z + ours_f, their_z + their_f):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- the switch


def test_reference_official_fills_only_what_is_left_open():
    default = load_config(None, ["loss.output=kl"])
    assert (default.loss.alpha, default.model.stem_relu, default.model.init) == (1.0, True, "he_fan_out")
    official = load_config(None, ["reference=official", "loss.output=kl"])
    assert (official.loss.alpha, official.model.stem_relu, official.model.init) == (0.1, False, "he_fan_out")
    explicit = load_config(None, ["reference=official", "loss.output=kl", "loss.alpha=1.0", "model.stem_relu=true"])
    assert (explicit.loss.alpha, explicit.model.stem_relu) == (1.0, True)


def test_paper_scale_trains_on_all_training_images():
    paper = load_config(None, ["scale=paper"])
    settings = (paper.data.val_size, paper.data.train_subset, paper.train.epochs, paper.train.schedule)
    assert settings == (0, 0, 200, "step")
    assert load_config(None).data.val_size == 5000
