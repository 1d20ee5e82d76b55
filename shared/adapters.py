"""Where a team's adapter weights live, and which adapter kinds a model can take: what the
api (registering, resolving) and the worker (fetching, loading) must agree on.

An adapter's file is stored content-addressed under its team, as sources are: the key is
derived from the job's team and the digest its params pin (``AdapterUse.sha256``), so a
worker can only ever read the submitting team's weights, and registering a name again
writes a new object instead of changing one a queued job still needs.
"""

from __future__ import annotations

import uuid

ADAPTERS_PREFIX = "adapters/"
# The model kinds whose pipelines load LoRA weights (diffusers' StableDiffusionLoraLoaderMixin:
# the UNet and the text encoder). ``echo`` has no weights; an upscaler is not a diffusion model.
LORA_KINDS = frozenset({"img2img", "inpaint", "controlnet-canny"})


def adapter_key(team_id: uuid.UUID, sha256: str) -> str:
    """The object holding the safetensors file with digest ``sha256`` of team ``team_id``."""
    return f"{ADAPTERS_PREFIX}{team_id}/{sha256}.safetensors"
