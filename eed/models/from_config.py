"""Where the config meets the models: ``model.arch`` checked against the backbone registry
and ``model.width``'s preset filled in.

Reading params.yaml (:func:`eed.config.load_config`) imports no network code, so a stage that
never builds a network (``prepare``) does not depend on the backbones. Everything that builds
one resolves its config here first; the call is idempotent.
"""

from __future__ import annotations

from eed.config import Config
from eed.errors import ConfigError
from eed.models.registry import get_spec

# The cpu preset narrows CIFAR networks to a quarter of their width (ResNet-18: 64 -> 16),
# keeping the topology; the ImageNet networks come from torchvision at their own width.
CPU_WIDTH_DIVISOR = 4


def preset_width(arch: str, scale: str) -> int:
    """``model.width`` when params.yaml leaves it null: the architecture's own width at paper
    scale, a quarter of it (a multiple of 8, at least 8) for CIFAR networks at cpu scale."""
    spec = get_spec(arch)
    if scale == "paper" or spec.family != "cifar":
        return spec.default_width
    return max(8, round(spec.default_width / CPU_WIDTH_DIVISOR / 8) * 8)


def resolve_architecture(config: Config) -> Config:
    """``config`` with a registered architecture made for its dataset and a concrete width; a
    :class:`ConfigError` naming ``model.arch`` otherwise."""
    family = get_spec(config.model.arch).family  # ConfigError "model.arch: unknown architecture ..."
    if config.data.dataset == "imagenet" and family != "imagenet":
        raise ConfigError(
            f"model.arch: {config.model.arch!r} is a CIFAR network (32x32); for ImageNet use "
            "imagenet_resnet18 or imagenet_resnet50"
        )
    if config.data.dataset in ("cifar10", "cifar100") and family != "cifar":
        raise ConfigError(
            f"model.arch: {config.model.arch!r} is an ImageNet network (224x224); "
            f"for {config.data.dataset} use a CIFAR network (see `eed models`)"
        )
    if config.model.width is not None:
        return config
    return config.model_copy(
        update={"model": config.model.model_copy(update={"width": preset_width(config.model.arch, config.scale)})}
    )
