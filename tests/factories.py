"""Builders for test inputs."""

from __future__ import annotations

import base64
import io
import uuid
from datetime import timedelta
from typing import Any

from PIL import Image, ImageDraw


def png_bytes(
    width: int = 96, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    img = Image.new("RGB", (width, height), (240, 240, 240))
    ImageDraw.Draw(img).ellipse((10, 10, width - 10, height - 10), fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# 2 steps at strength 1 without CFG: two UNet passes per image, the least that still
# denoises (the CPU is shared; what is under test is not the step count).
QUICK_PARAMS: dict[str, object] = {
    "strength": 1.0,
    "steps": 2,
    "guidance_scale": 0.0,
    "width": 64,
    "height": 64,
    "output_format": "png",
}


def queued_job(
    model: str, source_key: str, params: dict[str, Any], *, team: uuid.UUID | None = None,
    prompt: str = "-",
) -> Any:  # fmt: skip
    """A queued job's row as the api stores it, for render-path tests run in process."""
    from shared.models import Job

    return Job(
        id=uuid.uuid4(),
        team_id=team or uuid.uuid4(),
        model=model,
        prompt=prompt,
        negative_prompt=None,
        params=params,
        source_key=source_key,
    )


def job_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "tiny",
        "prompt": "a red sneaker on a snowy porch",
        "image": data_url(png_bytes()),
        "seed": 7,
    }
    body.update(overrides)
    return body


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny file whose header claims a huge image (mode 1 compresses to almost nothing)."""
    img = Image.new("1", (width, height))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def batch_body(**overrides: object) -> dict[str, object]:
    """Two products x three seasons x two variants = 12 jobs on the tiny model."""
    body: dict[str, object] = {
        "model": "tiny",
        "images": [
            {"image": data_url(png_bytes(color=(200, 40, 40))), "sku": "SKU-RED"},
            {"image": data_url(png_bytes(color=(40, 40, 200))), "sku": "SKU-BLUE"},
        ],
        "prompts": [
            {"name": "winter", "prompt": "the product on a snowy porch"},
            {"name": "summer", "prompt": "the product on a sunny beach"},
            "the product among autumn leaves",
        ],
        "variants": 2,
        "seed": 1234,
    }
    body.update(overrides)
    return body


def finish_jobs(
    session_factory: Any,
    storage: Any,
    job_ids: list[uuid.UUID],
    status: str = "succeeded",
    *,
    seconds: float = 1.0,
    review: str | None = None,
) -> None:
    """Play the worker for ``job_ids``: queued → running → ``status`` with real timestamps,
    and for succeeded jobs a real PNG stored under the job's output key (and ``review``,
    the state the worker's scores would decide, with its job.needs_review event).

    API-level tests use this to have outcomes without rendering; the integration tests
    render for real with the dispatcher and a worker.
    """
    from shared.jobs import JobStatus, claim_jobs_bulk, mark_failed_bulk, mark_succeeded_bulk
    from shared.models import Job
    from shared.storage import output_key

    with session_factory() as session:
        for job_id in job_ids:
            assert claim_jobs_bulk(session, [job_id], "fake-worker", 300) == [job_id]
            job = session.get(Job, job_id)
            # Back-date the start so throughput and ETA have a measurable window.
            job.started_at = job.started_at - timedelta(seconds=seconds)
            if status == JobStatus.SUCCEEDED:
                key = output_key(job.team_id, job.id, 0, "png")
                data = png_bytes(64, 64, color=(job.variant or 0, 100, 100))
                storage.put(key, data, "image/png")
                output = {"key": key, "width": 64, "height": 64, "content_type": "image/png"}
                success = (job_id, [output], {"fake": True}, None, review)
                done = mark_succeeded_bulk(session, [success])
                assert done == [job_id]
            elif status == JobStatus.FAILED:
                failed = mark_failed_bulk(session, [job_id], "PermanentRenderError: simulated")
                assert failed == [job_id]
            elif status != JobStatus.RUNNING:
                raise ValueError(f"cannot fake status {status!r}")
        session.commit()


# Where diffusers' save_lora_weights puts a UNet LoRA's tensors (worker/tiny.py makes whole
# real ones; the api reads only the header, so one layer shows its checks).
LORA_KEY = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def lora_file(seed: int, keys: tuple[str, ...] = (LORA_KEY,)) -> bytes:
    """A small LoRA safetensors file (rank 4, width 32) for the api's adapter checks."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {}
    for key in keys:
        tensors[f"{key}.lora_A.weight"] = rng.standard_normal((4, 32), dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.standard_normal((32, 4), dtype=np.float32)
    return save(tensors)
