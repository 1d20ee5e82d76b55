"""Build tiny random-weight Stable Diffusion pipelines without the model hub.

One per model kind that needs weights: img2img (``tiny``), inpaint (``tiny-inpaint``: the
UNet takes 9 channels, latents + mask + masked image) and canny ControlNet
(``tiny-controlnet``: the same UNet, VAE and text encoder plus a tiny ``ControlNetModel``).
Each is saved with ``save_pretrained`` and loaded back through ``from_pretrained``, the exact
path real models take. Their images are noise-like: the weights are random.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

TOKENIZER_MAX_LENGTH = 77
# Weights given to the tiny ControlNet's zero convolutions (see build_tiny_controlnet).
ZERO_CONV_STD = 1.0  # as diffusers' own multi-ControlNet tests initialise them
# Built-in name -> model kind (the names after ``builtin:`` in the registry).
TINY_KINDS: dict[str, str] = {
    "tiny": "img2img",
    "tiny-inpaint": "inpaint",
    "tiny-controlnet": "controlnet-canny",
}


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


def build_tiny_components(seed: int = 0, kind: str = "img2img") -> dict[str, object]:
    """Components shaped like diffusers' own ``get_dummy_components`` (32-channel UNet).

    ``kind`` "inpaint" widens the UNet input to 9 channels; "controlnet-canny" adds a
    ``controlnet`` component.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if kind not in TINY_KINDS.values():
        raise ValueError(f"no tiny model of kind {kind!r}; kinds: {sorted(TINY_KINDS.values())}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        # Inpainting UNets read 4 latent + 1 mask + 4 masked-image-latent channels.
        in_channels=9 if kind == "inpaint" else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    # Three blocks: latents are 1/4 of the image per side (SD's VAE: 1/8). With diffusers'
    # two-block dummy VAE (1/2) the UNet ran on 4x the latent pixels, so even the tiny model
    # was compute-bound on a CPU and batching could not show: 1.3x batched over one at a
    # time at 64 px, against 1.9-2.4x now (and every test render ~2x faster).
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
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
    components: dict[str, object] = {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }
    if kind == "controlnet-canny":
        components["controlnet"] = build_tiny_controlnet()
    return components


def build_tiny_controlnet() -> Any:
    """A ControlNet matching the tiny UNet: two blocks, two 2x downsamplings of the edges
    (the tiny VAE's scale factor of 4), cross-attention width 32."""
    from diffusers import ControlNetModel

    controlnet: Any = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32, 32),
    )
    # A fresh ControlNet's output convolutions are zero ("zero convolutions", so training
    # starts from the plain UNet): its edges would change nothing. Random weights there
    # make the tiny model's output depend on its edges, as a trained one's does.
    zero_convs = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=ZERO_CONV_STD)
    return controlnet


def tiny_pipeline_class(kind: str) -> Any:
    """The diffusers pipeline class a tiny model of ``kind`` is saved as."""
    import diffusers

    names = {
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
        "controlnet-canny": "StableDiffusionControlNetImg2ImgPipeline",
    }
    return getattr(diffusers, names[kind])


def save_tiny_pipeline(path: Path, kind: str = "img2img") -> Path:
    """Build the tiny pipeline of ``kind`` and save it to ``path`` (atomically, via a temp
    folder). A folder already holding a saved pipeline is left as it is."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pipeline_class = tiny_pipeline_class(kind)
    pipe = pipeline_class(**build_tiny_components(kind=kind), requires_safety_checker=False)
    pipe.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(path)
    except OSError:
        # Another process built it first; theirs is as good as ours.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


# The tiny LoRA's rank, and the spread of its up-projection weights (see save_tiny_lora).
TINY_LORA_RANK = 4
TINY_LORA_B_STD = 0.5
TINY_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def save_tiny_lora(path: Path, seed: int = 0, kind: str = "img2img") -> Path:
    """A random LoRA for the tiny UNet of ``kind``, written as real LoRA files are: PEFT
    layers on the attention projections, saved with diffusers' ``save_lora_weights``
    (``path/pytorch_lora_weights.safetensors``, returned). Different seeds give different
    adapters; the same seed the same file."""
    from peft import LoraConfig, get_peft_model_state_dict

    unet: Any = build_tiny_components(kind=kind)["unet"]  # the model's UNet (its seed: 0)
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=TINY_LORA_RANK,
            lora_alpha=TINY_LORA_RANK,
            init_lora_weights="gaussian",
            target_modules=TINY_LORA_TARGETS,
        )
    )
    # PEFT starts B at zero (a fresh LoRA changes nothing, as training wants): random B
    # weights make this one change the render, as a trained one does.
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=TINY_LORA_B_STD)
    tiny_pipeline_class(kind).save_lora_weights(
        Path(path), unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )
    return Path(path) / "pytorch_lora_weights.safetensors"


# The built-in upscale model's name (``builtin:tiny-upscale``), built by save_tiny_esrgan.
TINY_UPSCALE = "tiny-upscale"
# The tiny upscaler's width: ESRGAN's num_filters (64 in real ones), one RRDB block (23).
TINY_ESRGAN_FILTERS = 8
TINY_ESRGAN_BLOCKS = 1
# Its output layer's weights are multiplied by this, so its images have some contrast.
TINY_ESRGAN_CONTRAST = 4.0


def save_tiny_esrgan(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """A random-weight ESRGAN (RRDBNet, spandrel's own architecture class) of ``scale`` x,
    8 filters and 1 block, saved as ``path`` (.safetensors): the file an upscale-kind
    registry entry names, detected and loaded back by spandrel as real ones are. The last
    convolution is centred on mid-grey and given contrast, so its outputs vary across 0..1
    rather than clipping at black as a random network's do. A file already there is kept."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    path = Path(path)
    if path.exists():
        return path
    torch.manual_seed(seed)
    net = ESRGAN(num_filters=TINY_ESRGAN_FILTERS, num_blocks=TINY_ESRGAN_BLOCKS, scale=scale)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    last = [k for k in state if k.endswith(".bias")][-1]  # hr_conv1's, the output layer
    state[last] = torch.full_like(state[last], 0.5)
    state[last.replace(".bias", ".weight")] *= TINY_ESRGAN_CONTRAST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path
