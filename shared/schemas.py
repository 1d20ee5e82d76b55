"""Request and response bodies shared by the api, the worker and the CLI client."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.images import OutputFormat

MAX_METADATA_BYTES = 8 * 1024
MAX_SEED = 2**63 - 1


class JobCreate(BaseModel):
    """``POST /v1/jobs``. Optional knobs left out take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100)
    prompt: str = Field(min_length=1, max_length=2000)
    image: str = Field(
        min_length=1, description="A data URL, an http(s) URL, or an id from POST /v1/uploads."
    )
    negative_prompt: str | None = Field(default=None, max_length=2000)
    strength: float | None = Field(default=None, gt=0, le=1)
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    output_format: OutputFormat = "png"
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
        return value


class RenderParams(BaseModel):
    """Parameters after defaults are filled in: exactly what the worker renders."""

    strength: float
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    output_format: OutputFormat


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: str


class OutputPublic(BaseModel):
    url: str
    width: int
    height: int
    content_type: str


class JobPublic(BaseModel):
    id: uuid.UUID
    status: str
    model: str
    prompt: str
    negative_prompt: str | None
    params: RenderParams
    metadata: dict[str, Any] | None
    attempts: int
    error: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs: list[OutputPublic]


class UploadPublic(BaseModel):
    id: uuid.UUID
    filename: str | None
    content_type: str
    width: int
    height: int
    size_bytes: int


class UploadsPublic(BaseModel):
    uploads: list[UploadPublic]


class ModelPublic(BaseModel):
    alias: str
    kind: str
    description: str
    defaults: dict[str, Any]
    limits: dict[str, Any]


class ModelsPublic(BaseModel):
    models: list[ModelPublic]
