"""One VAE encode per batch for img2img, with each job's latents still drawn from its own seed.

The farm gives diffusers one generator per item (a job's pixels depend on its seed, never on
its neighbours'). With a generator list, diffusers' img2img ``prepare_latents`` encodes the
batch one image at a time: a batch of 16 costs 16 sequential batch-1 VAE encodes, each a
separate compiled graph call at a shape the warm-up never saw when it passed one generator.

``batch_vae_encode(pipe)`` makes the pipeline encode the whole batch in one call and then
draw item i's latent sample from generator i, the same draw diffusers makes per item
(``DiagonalGaussianDistribution.sample``: mean + std * randn of the item's shape), scaled
the same way. It hands diffusers the finished latents, which its ``prepare_latents`` takes
as they are (4-channel input is not encoded again) before adding each item's noise from
the same generators, in the same order. Same seeds, same random draws; only the encode is
batched (its floating-point sums may differ in the last bits from batch-1 encodes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Pipelines whose prepare_latents has img2img's signature and 4-channel pass-through.
BATCHABLE = ("StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetImg2ImgPipeline")
_MARK = "_imgfarm_batched_encode"


def batch_vae_encode(pipe: Any) -> bool:
    """Install the batched encode on ``pipe`` (once); False if its class is not batchable."""
    if type(pipe).__name__ not in BATCHABLE:
        return False
    if not getattr(pipe, _MARK, False):
        pipe.prepare_latents = _batched(pipe, pipe.prepare_latents)
        setattr(pipe, _MARK, True)
    return True


def _batched(pipe: Any, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    latent_channels = pipe.vae.config.latent_channels

    def prepare_latents(
        image: torch.Tensor,
        timestep: torch.Tensor,
        batch_size: int,
        num_images_per_prompt: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any = None,
    ) -> torch.Tensor:
        per_item = (
            isinstance(generator, list)
            and image.shape[1] != latent_channels
            and image.shape[0] == len(generator) == batch_size * num_images_per_prompt
        )
        if per_item:
            image = encode(pipe, image.to(device=device, dtype=dtype), generator)
        return original(
            image, timestep, batch_size, num_images_per_prompt, dtype, device, generator
        )

    return prepare_latents


def encode(pipe: Any, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Scaled latents of ``pixels`` (one VAE call), item i sampled with ``generators[i]``."""
    from diffusers.utils.torch_utils import randn_tensor

    dist = pipe.vae.encode(pixels).latent_dist
    mean, std = dist.mean, dist.std
    noise = torch.cat(
        [
            randn_tensor(mean[i : i + 1].shape, generator=g, device=mean.device, dtype=mean.dtype)
            for i, g in enumerate(generators)
        ]
    )
    return pipe.vae.config.scaling_factor * (mean + std * noise)
