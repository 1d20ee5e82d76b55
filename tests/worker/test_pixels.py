"""Tensors in and out of the pipeline give exactly the pixels diffusers' PIL handling gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from worker.pixels import batch_in, images_out, masks_in, to_pixels

PROCESSOR = VaeImageProcessor(vae_scale_factor=8)


def photos(count: int, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def test_batch_in_is_diffusers_preprocess_of_the_same_images():
    images = photos(3)
    ours = PROCESSOR.preprocess(batch_in([to_pixels(i) for i in images], "cpu"))
    theirs = PROCESSOR.preprocess(images)
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)
    # Same strides too (channels last): compiled graphs guard on them.
    assert ours.stride() == theirs.stride()


def test_to_pixels_flattens_modes_like_diffusers_convert_rgb():
    gray = Image.new("L", (16, 16), 77)
    assert to_pixels(gray).shape == (16, 16, 3)
    assert torch.equal(to_pixels(gray), to_pixels(gray.convert("RGB")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_images_out_is_diffusers_postprocess_to_pil(dtype):
    # A decoded batch in [-1, 1], with values that land on .5 after scaling (rounding ties).
    decoded = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(3)) * 2.2 - 1.1
    decoded[0, 0, 0, :4] = torch.tensor([2 * (k + 0.5) / 255 - 1 for k in range(4)])
    decoded = decoded.to(dtype)
    theirs = PROCESSOR.postprocess(decoded, output_type="pil")
    ours = images_out(PROCESSOR.postprocess(decoded, output_type="pt"))
    assert [i.size for i in ours] == [(40, 24)] * 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.mode == b.mode == "RGB"
        assert a.tobytes() == b.tobytes()


def test_masks_in_is_diffusers_mask_preprocess_of_the_same_masks():
    from diffusers.image_processor import VaeImageProcessor

    masks = [image.convert("L") for image in photos(2)]
    processor = VaeImageProcessor(
        vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )  # as StableDiffusionInpaintPipeline builds its mask_processor
    ours = processor.preprocess(masks_in(masks, "cpu"))
    theirs = processor.preprocess(masks)
    assert ours.shape == theirs.shape == (2, 1, 32, 40)
    assert torch.equal(ours, theirs)
    # The same layout (a size-1 dimension's stride means nothing).
    assert layout(ours) == layout(theirs)


def layout(t: torch.Tensor) -> list[int]:
    return [stride for stride, size in zip(t.stride(), t.shape, strict=True) if size > 1]
