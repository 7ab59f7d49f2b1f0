"""Backbone registry: ``@register_backbone`` maps a name to a builder, the way timm's
``@register_model`` does. A builder returns a :class:`~eed.models.backbone.Backbone`
(stem, ordered stages, head); :func:`create_model` wraps it in a
:class:`~eed.models.multi_exit.MultiExitNet`, attaching exits between its stages.

As in timm, the model modules import the registry and ``eed/models/__init__.py`` imports
every model module, so any import of ``eed.models…`` has registered them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eed.errors import ConfigError
from eed.models.backbone import Backbone
from eed.models.initialization import InitScheme, init_weights
from eed.models.multi_exit import MultiExitNet

BackboneBuilder = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: BackboneBuilder
    input_size: int  # square input resolution the topology is designed for
    default_width: int  # channels of the first stage at the architecture's own width
    family: str  # "cifar" or "imagenet"
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, *, input_size: int, default_width: int, family: str, description: str = ""):
    """Decorator registering ``builder(num_classes: int, width: int) -> Backbone`` under ``name``."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = BackboneSpec(
            name,
            builder,
            input_size,
            default_width,
            family,
            description or (builder.__doc__ or "").strip().splitlines()[0],
        )
        return builder

    return decorate


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str, given_as: str = "model.arch") -> BackboneSpec:
    """The registered backbone ``name``; a ConfigError naming ``given_as`` (the config key, or the
    command-line argument it came from) otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"{given_as}: unknown architecture {name!r}; allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_backbone(name: str, num_classes: int, width: int | None = None, *, stem_relu: bool = True) -> Backbone:
    """``stem_relu=False`` removes the ReLUs of the stem (the official release's CIFAR ResNet)."""
    spec = get_spec(name)
    backbone = spec.builder(num_classes=num_classes, width=width or spec.default_width)
    return backbone if stem_relu else backbone.without_stem_relu()


def create_model(
    name: str,
    num_classes: int,
    width: int | None = None,
    exits: bool = True,
    *,
    stem_relu: bool = True,
    init: InitScheme = "he_fan_out",
) -> MultiExitNet:
    """The multi-exit network (``exits=True``) or the plain backbone with the same main path,
    initialised by ``init`` (:func:`eed.models.initialization.init_weights`)."""
    net = MultiExitNet(create_backbone(name, num_classes, width, stem_relu=stem_relu), exits=exits)
    return init_weights(net, init)
