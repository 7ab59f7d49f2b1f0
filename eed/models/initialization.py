"""Weight initialisation of a whole multi-exit network, backbone and exits alike.

``he_fan_out`` (the default) is what the official EED release, torchvision's and timm's
ResNets do: every convolution drawn from N(0, 2 / (k*k*out_channels)) (He et al., fan-out
mode), batch/group norm weight 1 and bias 0. Linear layers keep PyTorch's default
(uniform, +-1/sqrt(in_features)), as in all three. ``pytorch`` leaves every layer as its
constructor made it: convolutions then come from PyTorch's Kaiming-uniform with a=sqrt(5),
whose std is 2.5x smaller (ResNet-18's 3x3 convs: ~0.024 instead of ~0.059).
"""

from __future__ import annotations

from typing import Literal, TypeVar

from torch import nn

InitScheme = Literal["he_fan_out", "pytorch"]
INIT_SCHEMES: tuple[str, ...] = ("he_fan_out", "pytorch")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def init_weights(module: ModuleT, scheme: InitScheme = "he_fan_out") -> ModuleT:
    """Initialise ``module``'s layers in place by ``scheme`` (see the module docstring); returns it."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
    if scheme == "pytorch":
        return module
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)) and layer.affine:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module
