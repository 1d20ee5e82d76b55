"""``imgfarm flower``: Celery's Flower on the farm's broker, never open by accident.

Flower shows every worker (named ``<alias>-<pid>@<host>``, with the ``render.<alias>`` queue
it consumes), the tasks (``imgfarm.render``, whose arguments are job ids, never images),
throughput and runtimes, from the task events workers send (``--task-events``).

Authentication: basic auth from ``IMGFARM_FLOWER_BASIC_AUTH`` (``user:password``, several
separated by commas). Without it Flower starts only with ``--local-only``, bound to
127.0.0.1. The credentials go to Flower in-process, not on the command line, where ``ps``
would show them. Flower's ``/metrics`` and ``/healthcheck`` answer without auth by Flower's
design: keep its port internal (see docs/operations.md).

Read-only by default: job state lives in Postgres, so revoking a task or killing a worker
from a web page would leave jobs for the sweeper at best. ``--allow-control`` lifts it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.broker import make_celery
from shared.errors import ConfigError
from shared.settings import Settings

# The tasks table: arguments (job ids) next to the state, so a job can be found by id.
TASK_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"
# Workers are named per process (pid), so every restart is a new worker to Flower:
# forget offline ones after an hour instead of listing them forever.
PURGE_OFFLINE_WORKERS_SECONDS = 3600
# Bound Flower's memory on a busy farm (its default keeps 100,000 tasks).
MAX_TASKS = 20_000


@dataclass(frozen=True)
class FlowerConfig:
    """What ``imgfarm flower`` hands to Flower; built and checked before Flower starts."""

    port: int
    address: str
    basic_auth: tuple[str, ...]
    inspect_timeout_ms: float
    read_only: bool

    def argv(self) -> list[str]:
        """Flower's command line, without the credentials (they are set in-process)."""
        return [
            "flower",
            f"--port={self.port}",
            f"--address={self.address}",
            f"--inspect_timeout={self.inspect_timeout_ms:g}",
            f"--tasks_columns={TASK_COLUMNS}",
            f"--purge_offline_workers={PURGE_OFFLINE_WORKERS_SECONDS}",
            f"--max_tasks={MAX_TASKS}",
            f"--read_only={self.read_only}",
        ]


def parse_basic_auth(value: str) -> tuple[str, ...]:
    """``user:password[,user2:password2]`` → the pairs; ConfigError naming what is wrong."""
    pairs = tuple(p.strip() for p in value.split(",") if p.strip())
    if not pairs:
        raise ConfigError("IMGFARM_FLOWER_BASIC_AUTH is empty; expected user:password")
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ConfigError(
                "IMGFARM_FLOWER_BASIC_AUTH must be user:password (several separated by "
                f"commas); got an entry for user {user or '(empty)'!r} without a password"
            )
    return pairs


def flower_config(
    settings: Settings,
    *,
    port: int,
    address: str | None = None,
    local_only: bool = False,
    inspect_timeout: float = 1.0,
    allow_control: bool = False,
) -> FlowerConfig:
    """Check the auth rules and build Flower's configuration.

    Refuses (ConfigError) to serve without basic auth unless ``local_only``; refuses a
    placeholder password when ``IMGFARM_ENV=prod``.
    """
    raw = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    auth = parse_basic_auth(raw) if raw.strip() else ()
    if local_only:
        if address not in (None, "127.0.0.1", "localhost"):
            raise ConfigError(f"--local-only binds 127.0.0.1; --address {address} contradicts it")
        address = "127.0.0.1"
    elif not auth:
        raise ConfigError(
            "Flower needs authentication: set IMGFARM_FLOWER_BASIC_AUTH=user:password, "
            "or pass --local-only to serve on 127.0.0.1 without it"
        )
    if settings.env == "prod" and any("change-me" in pair for pair in auth):
        raise ConfigError("IMGFARM_FLOWER_BASIC_AUTH still has its change-me placeholder password")
    return FlowerConfig(
        port=port,
        address=address or "0.0.0.0",
        basic_auth=auth,
        inspect_timeout_ms=inspect_timeout * 1000,
        read_only=not allow_control,
    )


def run_flower(settings: Settings, config: FlowerConfig) -> int:
    """Serve Flower until SIGTERM; returns Flower's exit code."""
    # Importing flower's options defines them; set the credentials there, not in argv.
    from flower.options import options

    options.basic_auth = list(config.basic_auth)
    app = make_celery(settings, "imgfarm-flower")
    return int(app.start(config.argv()) or 0)
