"""Batch-wise image operations in plain torch, for the in-memory (``tensor``) backend.

They reproduce the FFCV pipeline's semantics on whole batches at once:

* :func:`translate_flip`: FFCV's ``RandomTranslate(padding)`` then ``RandomHorizontalFlip``:
  the image is placed in a zero-filled canvas ``padding`` pixels larger on each side and
  an image-sized window is cut at offset ``(dy, dx)`` in ``[0, 2 * padding]``; flipped
  images read that window's columns right to left. Done as one ``torch.gather`` over the
  flattened canvas, with the flip folded into the column indices.
* :class:`Normalizer`: ``(pixel - 255 * mean) / (255 * std)`` in float32. FFCV's CPU
  ``NormalizeImage`` uses a float64-computed lookup table instead; the two agree within
  one float32 rounding step (~2e-7).

Random draws come from a CPU ``torch.Generator`` whatever the device, so a batch is
bit-identical for a given generator state on CPU and GPU.
"""

from __future__ import annotations

import torch

from eed.data.catalog import Normalization


def draw_translate_flip(batch_size: int, padding: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``(dy, dx, flip)`` for a batch: offsets uniform in ``[0, 2 * padding]``, flip with p = 0.5."""
    shift_y = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    shift_x = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator)
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return shift_y, shift_x, flip


def translate_flip(
    images: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Translate each image of ``images`` (B x C x H x W, any dtype) by its offsets, then flip
    the ones marked in ``flip``. Offset ``padding`` means no shift; uncovered pixels are 0."""
    batch, channels, height, width = images.shape
    device = images.device
    canvas_h, canvas_w = height + 2 * padding, width + 2 * padding
    canvas = images.new_zeros(batch, channels, canvas_h, canvas_w)
    canvas[:, :, padding : padding + height, padding : padding + width] = images
    shift_y, shift_x, flip = shift_y.to(device), shift_x.to(device), flip.to(device)

    rows = shift_y[:, None] + torch.arange(height, device=device)  # B x H
    columns = torch.arange(width, device=device)
    columns = shift_x[:, None] + torch.where(flip[:, None], width - 1 - columns, columns)  # B x W
    flat_index = (rows[:, :, None] * canvas_w + columns[:, None, :]).reshape(batch, 1, height * width)
    gathered = torch.gather(
        canvas.reshape(batch, channels, canvas_h * canvas_w), 2, flat_index.expand(batch, channels, height * width)
    )
    return gathered.reshape(batch, channels, height, width)


class Normalizer:
    """uint8 B x 3 x H x W -> normalized floats of ``dtype`` (computed in float32), in the
    requested memory format. Holds the constants on ``device`` so a batch costs no copy."""

    def __init__(
        self,
        normalization: Normalization,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.mean = torch.tensor(normalization.mean_255(), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(normalization.std_255(), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        result = (images.float() - self.mean) / self.std
        if self.dtype != torch.float32:
            result = result.to(self.dtype)
        return result.contiguous(memory_format=self.memory_format)
