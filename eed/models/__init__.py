"""Multi-exit CNNs: backbones from a registry, exits attached by :class:`MultiExitNet`.

A new backbone goes in a module of its own here (a builder returning a :class:`Backbone`,
decorated with ``@register_backbone``), imported below so that it registers.
"""

# The model modules register their backbones when imported (timm's layout).
from eed.models import cifar_resnet, cifar_vgg, imagenet  # noqa: F401
from eed.models.backbone import Backbone
from eed.models.multi_exit import (
    ExitBranch,
    MultiExitNet,
    MultiExitOutput,
    classifier_names,
    count_parameters,
    main_path_parameters,
)
from eed.models.registry import (
    BackboneSpec,
    create_backbone,
    create_model,
    get_spec,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ExitBranch",
    "MultiExitNet",
    "MultiExitOutput",
    "classifier_names",
    "count_parameters",
    "create_backbone",
    "create_model",
    "get_spec",
    "list_backbones",
    "main_path_parameters",
    "register_backbone",
]
