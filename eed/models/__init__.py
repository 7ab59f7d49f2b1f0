"""Multi-exit CNNs: backbones from a registry, exits attached by :class:`MultiExitNet`."""

from eed.models.backbone import Backbone
from eed.models.multi_exit import (
    ExitBranch,
    MultiExitNet,
    MultiExitOutput,
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
    "count_parameters",
    "create_backbone",
    "create_model",
    "get_spec",
    "list_backbones",
    "main_path_parameters",
    "register_backbone",
]
