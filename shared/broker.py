"""The Celery app both sides build from settings, and the names they meet by.

The api only sends tasks by name; the worker registers them. Neither imports the other.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from celery import Celery
from kombu.exceptions import OperationalError

from shared.settings import Settings

RENDER_TASK = "imgfarm.render"
# Longest render we plan for; Redis redelivers an unacked message after this.
VISIBILITY_TIMEOUT_SECONDS = 3600


# What "the broker is unreachable" looks like to a sender: kombu re-raises the transport's
# connection errors as OperationalError once send_task's retries are spent; the raw socket
# and redis-py errors are listed for the paths that let them through. Nothing else: a
# TypeError from our own code is a bug to surface, not an outage to wait out.
BROKER_UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def render_queue(model: str) -> str:
    """One queue per model alias: a worker pins one model and consumes only its queue."""
    return f"render.{model}"


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_filesystem_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
            "polling_interval": 0.25,
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}


def make_celery(settings: Settings, name: str = "imgfarm") -> Celery:
    """A Celery app on the farm's broker with the delivery guarantees we rely on."""
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        # Postgres holds job state; Celery results would be a second, weaker copy.
        task_ignore_result=True,
        # Ack after the render, and give the message back if the process dies mid-render.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue="default",
    )
    return app


def send_render(app: Celery, job_ids: list[str], model: str) -> None:
    """Hand a group of compatible jobs to their model's queue; raises one of
    ``BROKER_UNAVAILABLE`` if the broker is down."""
    app.send_task(
        RENDER_TASK,
        args=[job_ids],
        queue=render_queue(model),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )
