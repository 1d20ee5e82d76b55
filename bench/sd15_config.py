"""Stable Diffusion 1.5 at full size, with random weights, built without the model hub.

The dicts below are the public ``runwayml/stable-diffusion-v1-5`` configs (``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``), written
out so the benchmark runs offline. The weights are random: throughput does not depend on them.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIP ViT-L/14 text tower, as SD1.5 ships it.
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# SD1.5 ships PNDM with these betas. The benchmark uses DDIM with the same betas because
# PNDM's img2img schedule runs one extra step (16 UNet steps at 20 x 0.75, not 15), which
# would make the per-image FLOP count disagree with the steps asked for.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_sd15_components(device: str = "cpu", seed: int = 0) -> dict[str, object]:
    """Full-size SD1.5 img2img components with random weights, created directly on ``device``.

    Creating the modules under ``torch.device(device)`` runs the random initialisation on the
    GPU: initialising 1.1 B parameters on the CPU would take longer than the benchmark itself.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from worker.tiny import TOKENIZER_MAX_LENGTH, _byte_level_vocab

    # The byte-level vocabulary (514 entries) tokenizes any prompt; its ids are all below
    # the real 49408, so the full-size embedding table is exercised with valid ids.
    vocab = _byte_level_vocab()
    torch.manual_seed(seed)
    with torch.device(device):
        # Any: diffusers' lazy module hides nn.Module's methods from mypy.
        unet: Any = UNet2DConditionModel(**UNET_CONFIG)
        vae: Any = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **TEXT_ENCODER_CONFIG,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
        )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH),
        "scheduler": DDIMScheduler(**SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }
