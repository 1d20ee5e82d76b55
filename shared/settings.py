"""One settings object, read from ``IMGFARM_*`` environment variables at each entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the farm. Built once in each entry point and passed down, never global."""

    model_config = SettingsConfigDict(env_prefix="IMGFARM_", env_file=None, extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    data_dir: Path = Field(default=Path(".imgfarm"), description="Embedded-mode state folder.")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    models: Path | None = Field(default=None, description="Model registry TOML file.")
    # The operator's C2PA signers: team name -> certificate chain and key (worker/
    # content_credentials.py). Read by the worker at boot only; never by the api.
    c2pa_signers: Path | None = Field(
        default=None, description="C2PA signers TOML file (workers only)."
    )
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = DEV_SECRET
    max_image_pixels: int = 4096 * 4096
    # Longest over shortest side of a source image or mask; past it, refused (422) at submit.
    # Product photos run from 1:1 to banners of about 4:1; past 16:1 little of the product
    # survives a crop to a model's output, and a sliver costs only memory and time.
    max_image_aspect_ratio: float = Field(default=16.0, ge=1.0)
    max_upload_bytes: int = 20 * 1024 * 1024
    # A brand style adapter's safetensors file (POST /v1/adapters): SD1.5 LoRAs run from a
    # few MB (rank 4) to about 150 MB (rank 128). Uploads of it get the multipart limit.
    max_adapter_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    # Largest request body the api reads (api/body_limit.py), refused with 413 while it
    # streams, before any parsing. Unset: room for four data URLs of max_upload_bytes (base64
    # is 4/3 of the bytes; an inpaint job carries two, a batch may carry several) and 1 MiB
    # for the rest. More images than that go by URL or upload id.
    max_body_bytes: int | None = Field(default=None, gt=0)
    # Multipart uploads (POST /v1/uploads) are spooled to disk, not memory: unset, room for
    # ten files of max_upload_bytes and 1 MiB of multipart framing.
    max_multipart_body_bytes: int | None = Field(default=None, gt=0)
    # One deadline for fetching a source URL, redirects included (shared/netguard.py): a
    # server that sends a byte now and then is cut at it, not merely between reads.
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    # Requests fetching source URLs at once, per team and in all, per api process
    # (api/fetch_slots.py); one more answers 429 with Retry-After instead of queueing.
    fetch_concurrency_per_team: int = Field(default=4, ge=1)
    fetch_concurrency: int = Field(default=16, ge=1)
    # Database connections of one api process (SQLAlchemy's pool_size and max_overflow).
    # No request holds one while it fetches a URL, so a small pool serves many fetches.
    api_db_pool_size: int = Field(default=10, ge=1)
    api_db_max_overflow: int = Field(default=10, ge=0)
    url_expiry_seconds: int = 3600
    # Presigned upload PUT URLs: also how long a staged object may wait for /complete
    # before the dispatcher sweeps it (shared/staging.py).
    presign_expiry_seconds: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    allow_private_networks: str = ""
    max_attempts: int = 3
    lease_seconds: int = 300
    # How long an Idempotency-Key replays its first answer (api/idempotency.py); after it the
    # same key is a new request, and the dispatcher prunes the row.
    idempotency_ttl_seconds: int = Field(default=24 * 60 * 60, gt=0)
    # Batches each online worker may have waiting in Redis: enough to never starve a GPU,
    # few enough that priorities and cancels still act on the backlog in Postgres.
    dispatch_depth_per_worker: int = 2
    # Render tasks one worker runs at once (worker/device.py): while one task's batch is on
    # the GPU, the others fetch and decode their sources or encode and upload their outputs.
    # 1 renders strictly one batch after another (the GPU waits for every upload).
    worker_pipeline_depth: int = Field(default=3, ge=1, le=16)
    # Threads per worker for fetching, decoding, encoding and uploading images.
    worker_io_threads: int = Field(default=8, ge=1, le=64)
    # Of those, how many encode and score at once (None: one per CPU core). Uploads and
    # fetches wait on the network and need many threads; encoding and scoring need a core
    # and mostly the GIL, and more of them at once than cores only trade the GIL back and
    # forth (bench/overhead.py, 2 cores: 8.5 -> 6.6 CPU ms per echo job, 2 slots against 8).
    worker_cpu_threads: int | None = Field(default=None, ge=1, le=64)
    # Memory per worker for fetched source bytes (one photo, many prompts and variants:
    # fetched once). 0 turns the cache off.
    worker_source_cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # Memory per worker for prepared inputs: sources decoded and resized to an output size
    # (pixel bytes; one photo at one size: decoded and resized once). 0 turns the cache off.
    worker_prepared_cache_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    # zlib level of PNG outputs: 1 costs a third of Pillow's default 6 in CPU for 10-14%
    # more bytes on photos (bench/output_cost.py); 6-9 for storage over CPU. Pixels never change.
    worker_png_compress_level: int = Field(default=1, ge=0, le=9)  # as shared/images.py
    dispatch_poll_seconds: float = 1.0
    # A handed-over job still queued after this long was lost with a Redis restart: resend.
    redispatch_seconds: int = 600
    log_level: str = "INFO"
    # json in deployments (one object per line, with job/batch/team/worker context),
    # text for a person reading a terminal.
    log_format: Literal["json", "text"] = "text"
    # Prometheus /metrics of this process on its own port (every process: api, workers,
    # dispatcher). Unset: workers and the dispatcher serve none, the api serves /metrics on
    # its own port. A separate port keeps metrics (which name teams) off the public listener.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_address: str = "0.0.0.0"
    # Without metrics_port, whether the api serves /metrics on its own (public) port: unset,
    # only when it listens on loopback (`imgfarm up`, `imgfarm api` on 127.0.0.1), never on
    # 0.0.0.0 or a public address; true or false says so explicitly.
    metrics_on_api_port: bool | None = None
    # Flower's basic auth, "user:password" (several: "u1:p1,u2:p2"). `imgfarm flower` refuses
    # to start without it unless told --local-only.
    flower_basic_auth: SecretStr | None = None
    # OpenTelemetry traces (FastAPI, Celery, SQLAlchemy, botocore). Needs the `otel` extra;
    # the exporter is configured by the standard OTEL_* variables.
    otel_enabled: bool = False
    # --- webhooks (docs/webhooks.md) ---
    # Seconds before each delivery attempt: the Standard Webhooks schedule (immediately, 5 s,
    # 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h). One attempt per entry; the first is
    # always sent at once (its entry only counts the attempt); after the last the delivery is
    # dead-lettered. Tests compress it.
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    # How often the webhook worker's scheduler looks for due deliveries.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # Deliveries one webhook worker process sends at once (threads: the work is waiting on I/O).
    webhook_concurrency: int = Field(default=8, ge=1)
    # Default overlap of a rotated secret: both signatures are sent until it ends.
    webhook_rotation_overlap_seconds: int = Field(default=86400, ge=0)
    # --- live progress (api/live.py, api/routes/events.py) ---
    # A comment line every this many seconds on an open event stream, so proxies keep it.
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    # SQLite has no LISTEN/NOTIFY: the api's one poller reads the event log this often.
    sse_poll_seconds: float = Field(default=0.5, gt=0)
    # The event log keeps this long (Last-Event-ID resumes within it); the dispatcher prunes.
    event_retention_hours: float = Field(default=72.0, gt=0)
    # --- data lifecycle (shared/prune.py) ---
    # How often the dispatcher deletes what the teams' retention_days expired.
    prune_interval_seconds: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        # With nothing configured everything lives under data_dir: SQLite, a local
        # objects folder and Celery's filesystem broker, so `imgfarm up` needs no server.
        root = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{root / 'imgfarm.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = (root / "objects").as_uri()
        _parse_retry_schedule(self.webhook_retry_schedule)
        if self.env == "prod" and self.secret_key == DEV_SECRET:
            raise ValueError(
                "IMGFARM_SECRET_KEY must be set to a real secret when IMGFARM_ENV=prod"
            )
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the server-less filesystem broker keeps its messages."""
        return self.data_dir.resolve() / "broker"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def model_cache_dir(self) -> Path:
        """Where built-in offline models are saved on first use."""
        return self.data_dir.resolve() / "models"

    @property
    def body_limit_bytes(self) -> int:
        """``max_body_bytes``, or its default derived from ``max_upload_bytes``."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        data_url = -(-self.max_upload_bytes * 4 // 3) + 64  # base64, and "data:image/...,"
        return 4 * data_url + MIB

    @property
    def multipart_body_limit_bytes(self) -> int:
        """``max_multipart_body_bytes``, or its default derived from ``max_upload_bytes``."""
        if self.max_multipart_body_bytes is not None:
            return self.max_multipart_body_bytes
        return 10 * self.max_upload_bytes + MIB

    @property
    def private_networks(self) -> list[str]:
        return [c.strip() for c in self.allow_private_networks.split(",") if c.strip()]

    @property
    def webhook_retry_delays(self) -> list[float]:
        """``IMGFARM_WEBHOOK_RETRY_SCHEDULE`` as seconds, one entry per delivery attempt."""
        return _parse_retry_schedule(self.webhook_retry_schedule)


def _parse_retry_schedule(value: str) -> list[float]:
    try:
        delays = [float(part) for part in value.split(",") if part.strip()]
    except ValueError as e:
        raise ValueError(
            f"IMGFARM_WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds, got {value!r}"
        ) from e
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"IMGFARM_WEBHOOK_RETRY_SCHEDULE needs delays >= 0, got {value!r}")
    return delays
