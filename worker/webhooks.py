"""The webhook worker (``imgfarm worker --webhooks``): sends events, retries them for days.

One process, no model, no GPU. Two parts:

- a scheduler thread that, every ``IMGFARM_WEBHOOK_POLL_SECONDS``, locks due deliveries in
  Postgres (``FOR UPDATE SKIP LOCKED``) and sends one ``imgfarm.deliver_webhook`` task per
  delivery to the ``webhooks`` queue, keeping that queue shallow (like the job dispatcher);
- a Celery worker with a thread pool consuming the ``webhooks`` queue: each task makes one
  signed HTTP attempt through the SSRF guard and records the outcome.

Postgres holds the schedule (next_attempt_at, attempts), so a Redis or worker restart loses
nothing: a message lost in Redis is re-sent after ``IMGFARM_REDISPATCH_SECONDS``, an attempt
whose process died is picked again when its lease ends. Several webhook workers may run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import make_celery
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import utcnow
from shared.netguard import Network, Resolver, guarded_client, is_blocked, parse_networks
from shared.netguard import system_resolver as default_resolver
from shared.settings import Settings
from shared.webhooks import (
    LEASE_MARGIN_SECONDS,
    USER_AGENT,
    AttemptResult,
    Claimed,
    claim,
    count_in_flight,
    parse_retry_after,
    pick_due,
    recheck,
    record,
    sign,
)

log = logging.getLogger(__name__)

WEBHOOK_TASK = "imgfarm.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
# Messages waiting in the queue per delivery thread: enough to keep threads busy, few
# enough that every queued message is taken long before it would count as lost.
QUEUE_DEPTH_PER_THREAD = 4
# Bytes of a failed answer's body kept in last_error (enough to read the receiver's reason).
ERROR_BODY_BYTES = 512


@dataclass
class WebhookContext:
    """What the webhook worker process holds: settings, sessions, the SSRF allowlist."""

    settings: Settings
    session_factory: sessionmaker[Session]
    allowed: list[Network]
    resolver: Resolver = default_resolver


# --- one attempt ----------------------------------------------------------------------------


def post(claimed: Claimed, ctx: WebhookContext) -> AttemptResult:
    """POST the event once: signed, 15 s timeout, no redirects, only to allowed addresses."""
    started = utcnow()
    clock = time.monotonic()
    headers = {
        **sign(claimed.event_id, claimed.body, claimed.secrets, started),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }

    def elapsed_ms() -> int:
        return int((time.monotonic() - clock) * 1000)

    timeout = ctx.settings.webhook_timeout_seconds
    try:
        with (
            guarded_client(ctx.allowed, timeout=timeout, resolver=ctx.resolver) as client,
            client.stream("POST", claimed.url, content=claimed.body, headers=headers) as resp,
        ):
            error = None
            if not resp.is_success:
                error = f"HTTP {resp.status_code}: {_head_of(resp)}"
                if resp.is_redirect:
                    error += f" (redirect to {resp.headers.get('location')!r} not followed)"
            return AttemptResult(
                started_at=started,
                latency_ms=elapsed_ms(),
                status_code=resp.status_code,
                error=error,
                retry_after=parse_retry_after(resp.headers.get("retry-after"), utcnow()),
            )
    except httpx.TimeoutException as e:
        error = f"timeout after {timeout:g}s ({type(e).__name__})"
        return AttemptResult(started_at=started, latency_ms=elapsed_ms(), error=error)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        return AttemptResult(
            started_at=started,
            latency_ms=elapsed_ms(),
            error=f"{type(e).__name__}: {e}",
            blocked=is_blocked(e) or isinstance(e, httpx.InvalidURL),
        )


def _head_of(resp: httpx.Response) -> str:
    """The start of an error answer's body (a receiver's reason), never the whole body."""
    data = b""
    try:
        for chunk in resp.iter_raw():
            data += chunk
            if len(data) >= ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass
    return data[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()


def deliver(ctx: WebhookContext, delivery_id: uuid.UUID, token: str) -> str:
    """Claim, attempt and record one delivery; returns what happened (for logs and tests)."""
    lease = ctx.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
    with session_scope(ctx.session_factory) as session:
        claimed = claim(session, delivery_id, token, lease)
    if isinstance(claimed, str):
        log.info("webhook delivery %s skipped: %s", delivery_id, claimed)
        return "skipped"
    return send_claimed(ctx, claimed)


def send_claimed(ctx: WebhookContext, claimed: Claimed) -> str:
    """Attempt and record one claimed delivery, unless its endpoint was disabled since the
    claim (a 410 answered meanwhile to another thread): then it is dropped unsent."""
    delivery_id = claimed.id
    # Checked as late as possible: what remains is the time from this read to the request
    # reaching the receiver (a connect, milliseconds), documented in docs/webhooks.md.
    with session_scope(ctx.session_factory) as session:
        dropped = recheck(session, claimed)
    if dropped is not None:
        log.info("webhook delivery %s dropped before sending: %s", delivery_id, dropped)
        return "dropped"
    # The HTTP call runs outside any transaction: a slow receiver holds no database lock.
    result = post(claimed, ctx)
    try:
        with session_scope(ctx.session_factory) as session:
            outcome = record(session, claimed, result, ctx.settings.webhook_retry_delays)
    except IntegrityError:
        # The endpoint (and with it the delivery) was deleted during the attempt.
        log.info("webhook delivery %s was deleted during its attempt", delivery_id)
        return "deleted"
    log.info(
        "webhook %s attempt %d to %s: %s (%s, %d ms)",
        claimed.event_id,
        claimed.attempt,
        claimed.url,
        outcome,
        result.status_code if result.status_code is not None else result.error,
        result.latency_ms,
    )
    return outcome


def register_webhook_task(app: Celery, ctx: WebhookContext) -> None:
    """Bind the delivery task to this process's context (no module-level globals)."""

    # Early ack: Postgres, not Redis, brings back an attempt lost with its process (the
    # lease), so a redelivered message would only be skipped.
    @app.task(name=WEBHOOK_TASK, acks_late=False, ignore_result=True)
    def deliver_webhook(delivery_id: str, token: str) -> str:
        return deliver(ctx, uuid.UUID(delivery_id), token)


# --- the scheduler --------------------------------------------------------------------------


class Scheduler(threading.Thread):
    """Hands due deliveries to the ``webhooks`` queue; safe to run in several processes."""

    def __init__(self, ctx: WebhookContext, celery: Celery) -> None:
        super().__init__(name="imgfarm-webhook-scheduler", daemon=True)
        self.ctx = ctx
        self.celery = celery
        self.stopped = threading.Event()
        self.depth = QUEUE_DEPTH_PER_THREAD * ctx.settings.webhook_concurrency

    def tick(self) -> int:
        """Send the due deliveries the queue has room for; returns how many were sent."""
        redispatch = self.ctx.settings.redispatch_seconds
        with session_scope(self.ctx.session_factory) as session:
            room = self.depth - count_in_flight(session, redispatch)
            picked = pick_due(session, room, redispatch)
        for delivery_id, token in picked:
            # A send that fails leaves the row handed over: it is re-sent once counted lost.
            self.celery.send_task(
                WEBHOOK_TASK,
                # kwargs, not args: log context reads positional task args as job ids.
                kwargs={"delivery_id": delivery_id, "token": token},
                queue=WEBHOOK_QUEUE,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        return len(picked)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                sent = self.tick()
            except Exception:  # a database or broker restart must not end the scheduler
                log.exception("webhook scheduler tick failed; retrying")
                sent = 0
            # A full tick likely left more due rows: look again at once.
            if sent < self.depth:
                self.stopped.wait(self.ctx.settings.webhook_poll_seconds)

    def stop(self) -> None:
        self.stopped.set()


# --- the process ----------------------------------------------------------------------------


def webhook_worker_name() -> str:
    return f"webhooks-{os.getpid()}@{socket.gethostname()}"


def run_webhook_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Block delivering webhooks until SIGTERM (warm shutdown: running attempts finish)."""
    engine = make_engine(settings.database_url)
    ctx = WebhookContext(
        settings=settings,
        session_factory=make_session_factory(engine),
        allowed=parse_networks(settings.private_networks),
    )
    app = make_celery(settings, "imgfarm-webhooks")
    register_webhook_task(app, ctx)
    scheduler = Scheduler(ctx, app)
    scheduler.start()
    log.info(
        "webhook worker started (%d threads, poll every %.2fs)",
        settings.webhook_concurrency,
        settings.webhook_poll_seconds,
    )
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.webhook_concurrency}",
                f"--queues={WEBHOOK_QUEUE}",
                f"--hostname={webhook_worker_name()}",
                "--task-events",
                "--without-gossip",
                "--without-mingle",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        scheduler.stop()
        scheduler.join(timeout=10)
        engine.dispose()
