"""Which device the computation runs on and in which memory layout: the two settings the data
layer and the engine must agree on, so both read them here (a leaf: torch and errors only)."""

from __future__ import annotations

import torch

from eed.errors import ConfigError


def resolve_device(device: torch.device | str) -> torch.device:
    """``"auto"`` = CUDA when available, else the CPU; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def uses_channels_last(setting: str, device: torch.device) -> bool:
    """``train.channels_last``: on, off, or auto = on CUDA only (where it pays off)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")
