"""Images in and out of the pipeline as tensors, so the device lane does no per-pixel CPU work.

Given PIL images, a diffusers pipeline converts them on the calling thread, which in the
worker is the device lane: PIL -> float32 numpy -> tensor before the GPU starts, and tensor
-> float32 numpy -> PIL after it finished, while the GPU waits. For a batch of 16 at 512²
that is ~170 ms each way on a 2-core machine (measured; ~1.3 s of GPU work per such batch
on an H200). Instead, each job's source becomes a uint8 tensor while it is prepared (the io
pool), the lane stacks and moves a batch of them in one copy and converts on the device,
and it asks the pipeline for tensors back (``output_type="pt"``) and makes 8-bit pixels of
them on the device too.

The arithmetic is diffusers' own, in the same order and precision, so the pixels are the
same as with PIL in and out: in, x / 255 in float32, then the pipeline's 2x - 1; out, the
pipeline's denormalize and clamp, then round(x * 255) in float32 (half to even, as numpy).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 tensor (H, W, 3), as PIL lays it out: cheap to keep and batch."""
    return torch.from_numpy(np.array(image.convert("RGB")))


def batch_in(pixels: list[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """A (N, 3, H, W) float32 batch in [0, 1] on ``device``: diffusers' ``pil_to_numpy``
    divides by 255 in float32 too; its preprocess normalizes to [-1, 1] from there.

    Channels last in memory, like diffusers' own conversion (a transposed NHWC array):
    compiled graphs guard on strides, so the VAE encoder warmed up on PIL images must see
    these same strides, or a worker's first job would compile it again.
    """
    batch = torch.stack(pixels).to(device).permute(0, 3, 1, 2)
    return batch.to(torch.float32) / 255.0


def masks_in(masks: list[Image.Image], device: torch.device | str) -> torch.Tensor:
    """Inpaint masks (mode L, white repaints) as a (N, 1, H, W) float32 batch in [0, 1] on
    ``device``. The inpaint pipeline multiplies the mask with the image, so both must be on
    the same device. Channels first in memory: torch reads diffusers' own conversion (a
    zero stride on its one channel) as that layout, and the layout reaches the UNet's input
    through the mask's resize, where compiled graphs guard on it."""
    levels = [torch.from_numpy(np.array(mask.convert("L"))) for mask in masks]
    batch = torch.stack(levels).to(device).unsqueeze(1)
    return batch.to(torch.float32) / 255.0


def images_out(batch: torch.Tensor) -> list[Image.Image]:
    """PIL images of a pipeline's ``output_type="pt"`` result (N, 3, H, W, in [0, 1]):
    diffusers' ``pt_to_numpy`` + ``numpy_to_pil``, with the per-pixel work on the device and
    one copy of 8-bit pixels to the host."""
    levels = (batch.float() * 255).round().to(torch.uint8)
    host = levels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [Image.fromarray(array) for array in host]
