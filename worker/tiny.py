"""Build a tiny random-weight Stable Diffusion img2img pipeline without the model hub.

The pipeline is saved with ``save_pretrained`` and loaded back through ``from_pretrained``,
the exact path real models take. Its images are noise-like: the weights are random.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TOKENIZER_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level_vocab() -> dict[str, int]:
    # GPT-2 style byte-to-unicode map: every byte has a printable symbol, so any
    # prompt tokenizes without merges; the `</w>` forms mark word ends.
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(s, len(vocab))
    return vocab


def build_tiny_components(seed: int = 0) -> dict[str, object]:
    """Components shaped like diffusers' own ``get_dummy_components`` (32-channel UNet)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    vocab = _byte_level_vocab()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(vocab),
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
        )
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def save_tiny_pipeline(path: Path) -> Path:
    """Build the tiny img2img pipeline and save it to ``path`` (atomically, via a temp folder)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pipe = StableDiffusionImg2ImgPipeline(**build_tiny_components(), requires_safety_checker=False)
    pipe.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(path)
    except OSError:
        # Another process built it first; theirs is as good as ours.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path
