"""What the benches share: the run's environment, random-weight models, timers, a JSON report.

Scripts under bench/ put the repository root on ``sys.path`` and import this module; torch
and diffusers are imported only by the helpers that need them, so the benches that measure
the services (overhead, submit, dispatch_pick) stay light. ``python -m bench.harness
A.json ...`` prints each report's summary (bench/gpu_session.sh ends with it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job
from shared.settings import Settings
from shared.storage import LocalStorage, storage_from_settings

ROOT = Path(__file__).resolve().parents[1]
# The SD1.5 img2img job every model bench renders (512², 20 steps): 15 denoising steps, CFG.
SD15_STRENGTH, SD15_GUIDANCE = 0.75, 7.5


def log(msg: str) -> None:
    print(msg, flush=True)


def parser(doc: str | None, *, model: bool = False) -> argparse.ArgumentParser:
    """A bench's command line: its docstring's first paragraph, ``--json``, and with
    ``model`` the ``--device`` and ``--smoke`` flags of the benches that render."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    if model:
        p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        p.add_argument("--smoke", action="store_true", help="the tiny model: seconds, for tests")
    return p


def environment(device: str) -> dict[str, Any]:
    """Versions, device and machine, as every bench's JSON records them."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "diffusers", "transformers")},
        "device": device,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.startswith("cuda"):
        import torch

        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    log("== environment ==")
    for k, v in env.items():
        log(f"  {k}: {v}")
    return env


# --- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_calls(fn: Callable[[], Any], sync: Callable[[], None], iters: int = 5) -> list[float]:
    """Seconds of each of up to ``iters`` calls (at least 3, then until 6 s are spent);
    ``sync`` waits for the device before each clock reading."""
    times: list[float] = []
    while len(times) < iters and (len(times) < 3 or sum(times) < 6.0):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def graph_count() -> int:
    """Graphs torch.compile has produced so far in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# --- images -----------------------------------------------------------------------------------


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A product-photo stand-in: smooth gradient, a few soft shapes, mild sensor noise.

    Random-weight models render noise or flat colour, which PNG compresses far worse or far
    better than a real photo: benches store this where encoding cost matters.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c, (a, b) in enumerate([(210, 30), (200, 20), (190, 10)]):
        img[..., c] = a - b * (y / height) + 10 * np.sin(x / width * 3.1 + c)
    for _ in range(4):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.08, 0.25) * width, rng.uniform(0.08, 0.25) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        shade = 0.75 + 0.25 * (1 - (y - cy) / (2 * ry))
        img[inside] = rng.uniform(20, 235, 3) * shade[inside, None]
    img += rng.normal(0.0, 3.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --- random-weight img2img models -------------------------------------------------------------


# SD1.5 at full size, built without the model hub: the public runwayml/stable-diffusion-v1-5
# configs where they differ from the library's defaults (the weights are random: throughput
# does not depend on them). diffusers' UNet2DConditionModel defaults are SD1's UNet
# (320-640-1280-1280 blocks, 2 layers each, 8-dim heads): SD1.5's differs only here.
UNET_CONFIG: dict[str, Any] = {"cross_attention_dim": 768, "sample_size": 64}

VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIP ViT-L/14 text tower, as SD1.5 ships it: where it differs from CLIPTextConfig's defaults
# (ViT-B/32's tower: 12 layers, 77 positions, 49408 tokens, quick_gelu, like L/14's).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "projection_dim": 768,
}

# SD1.5 ships PNDM with these betas. The benchmark uses DDIM with the same betas because
# PNDM's img2img schedule runs one extra step (16 UNet steps at 20 x 0.75, not 15), which
# would make the per-image FLOP count disagree with the steps asked for.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_sd15_components(device: str = "cpu", seed: int = 0) -> dict[str, object]:
    """Full-size SD1.5 img2img components with random weights, created directly on ``device``.

    Creating the modules under ``torch.device(device)`` runs the random initialisation on the
    GPU: initialising 1.1 B parameters on the CPU would take longer than the benchmark itself.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from worker.tiny import TOKENIZER_MAX_LENGTH, _byte_level_vocab

    # The byte-level vocabulary (514 entries) tokenizes any prompt; its ids are all below
    # the real 49408, so the full-size embedding table is exercised with valid ids.
    vocab = _byte_level_vocab()
    eos = vocab["<|endoftext|>"]
    torch.manual_seed(seed)
    with torch.device(device):
        # Any: diffusers' lazy module hides nn.Module's methods from mypy.
        unet: Any = UNet2DConditionModel(**UNET_CONFIG)
        vae: Any = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **TEXT_ENCODER_CONFIG,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=eos,
                pad_token_id=eos,
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


def img2img_pipeline(device: str, smoke: bool) -> Any:
    """StableDiffusionImg2ImgPipeline with random weights on ``device``: the tiny components
    for ``smoke``, full-size SD1.5 otherwise, DDIM either way."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    if smoke:
        from worker.tiny import build_tiny_components

        components = build_tiny_components()
        components["scheduler"] = DDIMScheduler(**SCHEDULER_CONFIG)
    else:
        components = build_sd15_components(device)
    # Any: diffusers' lazy module hides the pipeline's methods from mypy.
    pipe: Any = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sd15_checkpoint(workdir: Path, smoke: bool, device: str, max_batch: int) -> Any:
    """The registry entry a worker would get for ``img2img_pipeline`` saved under ``workdir``
    (fp16 on CUDA, like a checkpoint's fp16 variant), for ``worker.pipelines.load_model``.
    A checkpoint saved by an earlier bench of the session is reused: SD1.5 takes a while."""
    import torch

    from shared.registry import ModelSpec

    folder = workdir / ("tiny-random" if smoke else "sd15-random")
    if not (folder / "model_index.json").exists():
        t = time.perf_counter()
        pipe = img2img_pipeline(device, smoke)
        if device.startswith("cuda"):
            pipe.to(dtype=torch.float16)
        pipe.save_pretrained(folder)
        log(f"  built and saved {folder} in {time.perf_counter() - t:.1f} s")
        del pipe
        free_accelerator()
    size = 64 if smoke else 512
    return ModelSpec(
        alias="sd15-random",
        source=str(folder),
        dtype="bfloat16",
        device=device,
        max_batch=max_batch,
        steps=4 if smoke else 20,
        strength=SD15_STRENGTH,
        guidance_scale=SD15_GUIDANCE,
        width=size,
        height=size,
        options={"compile": True},
    )


def warm_bucket(model: Any, batch: int, guidance_scale: float) -> Any:
    """One entry of ``worker.pipelines.warm_model``'s plan, alone, so a short lease warms
    the buckets its measurements need first; the result says how long it took."""
    from worker.accel import warm_up
    from worker.pipelines import warm_up_inputs

    spec = model.spec
    return warm_up(
        model.pipe,
        width=spec.width,
        height=spec.height,
        steps=spec.steps,
        batch_size=batch,
        strength=spec.strength,
        guidance_scale=guidance_scale,
        extra_inputs=warm_up_inputs(spec, batch),
    )


def free_accelerator() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the report -------------------------------------------------------------------------------


class Report:
    """Named steps; figures in ``data``, rewritten to ``path`` after each step, so a run cut
    short by a timeout keeps the steps before. A failed step is recorded and the run goes on.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        summarize: Callable[[dict[str, Any]], dict[str, Any]] = lambda _: {},
        **data: Any,
    ) -> None:
        self.path, self.summarize, self.start = path, summarize, time.monotonic()
        self.data: dict[str, Any] = {**data, "errors": [], "skipped": [], "findings": []}

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None if it failed."""
        log(f"\n== {name} ==")
        t = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # a failed section is a finding too: report it, go on
            log(f"FAILED {name} after {time.perf_counter() - t:.1f} s: {exc!r}")
            traceback.print_exc()
            sys.stderr.flush()
            self.data["errors"].append({"step": name, "error": repr(exc)})
            free_accelerator()
            return None
        finally:
            self.dump()

    def finding(self, text: str) -> None:
        log(f"FINDING: {text}")
        self.data["findings"].append(text)

    def dump(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.data.update(self.summarize(self.data))
        if self.path is not None:
            write_json(self.path, self.data)

    def finish(self, name: str) -> bool:
        """The last dump and the printed summary; whether no step failed."""
        self.dump()
        print_summary(name, self.data)
        return not self.data["errors"]


def print_summary(name: str, data: dict[str, Any]) -> None:
    """The figures under ``summary`` (and ``variants``), then errors, findings, skipped."""
    elapsed = f" after {data['elapsed_s']} s" if "elapsed_s" in data else ""
    log(f"\n== {name} summary{elapsed} ==")
    for key, value in {**data.get("summary", {}), **data.get("variants", {})}.items():
        log(f"  {key}: {json.dumps(value)}")
    for key in ("errors", "findings", "skipped"):
        if data.get(key):
            log(f"  {key.upper()}: {json.dumps(data[key])}")


def write_json(path: Path, data: Any) -> None:
    """Atomically: a run killed mid-write leaves the last full file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# --- jobs, and what the farm did with them ----------------------------------------------------


TERMINAL = ("succeeded", "failed", "canceled")


def render_job(spec: Any, team_id: Any, source_key: str, seed: int) -> Any:
    """A job as the api stores it (params resolved from the spec), ``queued``."""
    from shared.schemas import RenderParams

    fields = ("strength", "steps", "guidance_scale", "width", "height")
    params = RenderParams(seed=seed, output_format="png", **{k: getattr(spec, k) for k in fields})
    return Job(
        id=uuid.uuid4(),
        team_id=team_id,
        model=spec.alias,
        status="queued",
        prompt=f"a red sneaker on a porch, scene {seed % 4}",
        params=params.model_dump(),
        source_key=source_key,
        attempts=0,
    )


def status_counts(factory: sessionmaker[Session], batch_id: uuid.UUID) -> Counter[str]:
    """Jobs of the batch by status, in one query."""
    with factory() as session:
        rows = session.execute(
            select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        )
        return Counter({str(status): int(n) for status, n in rows})


def missing_outputs(factory: sessionmaker[Session], settings: Settings, batch_id: uuid.UUID) -> int:
    """Succeeded jobs of the batch whose output object is not in storage."""
    with factory() as session:
        outputs = session.scalars(
            select(Job.outputs).where(Job.batch_id == batch_id, Job.status == "succeeded")
        )
        keys = {o["key"] for each in outputs for o in each or []}
    return len(keys - stored_keys(settings, "outputs/"))


def stored_keys(settings: Settings, prefix: str) -> set[str]:
    """Every key under ``prefix`` (one listing, not a request per object)."""
    storage = storage_from_settings(settings)
    if isinstance(storage, LocalStorage):
        root = storage.root / prefix
        return {str(p.relative_to(storage.root)) for p in root.rglob("*") if p.is_file()}
    return {o.key for o in storage.list_objects(prefix)}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        path = Path(arg)
        if path.exists():
            print_summary(path.stem, json.loads(path.read_text()))
        else:
            log(f"{path.stem}: no JSON")
