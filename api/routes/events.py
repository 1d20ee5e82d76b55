"""``/v1/batches/{id}/events`` and ``/v1/jobs/{id}/events``: live progress as Server-Sent Events.

A stream sends a ``snapshot`` first, then every change from the event log in order (each with
its log id, so ``Last-Event-ID`` resumes after it), ``batch.progress`` at most once a second,
and ``end`` when what it follows is final. It reads the database only when the api's one
listener (api/live.py) says something it follows changed. Backpressure is the client's: the
next page is read only after the last one was sent, and a client that takes nothing for
``SEND_TIMEOUT_SECONDS`` is dropped. A stream whose key is revoked ends within one
keep-alive interval: the key is looked at again on every wake-up, and the longest wait is
the keep-alive's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import event_stream as es
from api.batches import get_batch, owned_job
from api.deps import CallerDep, SessionDep, SettingsDep, TeamDep, release_connection
from api.errors import KEYED_ERRORS, errors_for
from api.live import EventHub
from shared.models import ApiKey

router = APIRouter(tags=["events"], responses=KEYED_ERRORS)

# A stream with rows held back (an older transaction still open) looks again this soon.
HELD_BACK_RETRY_SECONDS = 0.2
# ... and sends them anyway once held this long: the oldest open transaction may be anyone's
# (an idle psql session that wrote), and progress must not freeze behind it. The price: a
# row of that very transaction, should it write one, sorts before the cursor and is missed.
HELD_BACK_MAX_SECONDS = 5.0
# Longest wait without a wake-up before a stream looks anyway (a lost NOTIFY costs this).
IDLE_CHECK_SECONDS = 30.0
PROGRESS_SECONDS = 1.0
SEND_TIMEOUT_SECONDS = 60.0
STREAM_RESPONSES = {
    **errors_for(404, 422),
    200: {"content": {"text/event-stream": {}}, "description": "An event stream."},
}

LastEventIdHeader = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        description="Resume after this event id (0: from the start of the retained log).",
    ),
]
LastEventIdQuery = Annotated[
    int | None,
    Query(ge=0, description="As the Last-Event-ID header, for clients that cannot set it."),
]
Follow = Annotated[
    bool, Query(description="Keep the stream open after the end (a retry may requeue jobs).")
]

T = TypeVar("T")


class Stream:
    """One client's stream: its cursor, and the reads it makes in a worker thread."""

    def __init__(
        self, request: Request, follow: es.Follow, job_count: int | None, key_id: uuid.UUID
    ) -> None:
        self.sessions: sessionmaker[Session] = request.app.state.session_factory
        self.key_id = key_id
        # Waits no longer than a keep-alive, so a revoked key's stream ends within one.
        self.max_wait = min(IDLE_CHECK_SECONDS, request.app.state.settings.sse_ping_seconds)
        self.hub: EventHub = request.app.state.event_hub
        self.follow = follow
        self.job_count = job_count
        self.cursor = es.Cursor()

    async def read(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.sessions() as session:
                return fn(session)

        return await anyio.to_thread.run_sync(run)

    def state(self, session: Session) -> dict[str, Any]:
        if self.follow.job_id is not None:
            return es.job_state(session, self.follow.job_id)
        assert self.follow.batch_id is not None and self.job_count is not None
        return es.batch_state(session, self.follow.batch_id, self.job_count)

    def done(self, session: Session) -> bool:
        if self.follow.job_id is not None:
            return es.job_state(session, self.follow.job_id)["status"] in es.FINAL_STATUSES
        assert self.follow.batch_id is not None
        return es.batch_done(session, self.follow.batch_id)

    def revoked(self, session: Session) -> bool:
        """Whether the key the stream was opened with has been revoked since."""
        live = select(ApiKey.id).where(ApiKey.id == self.key_id, ApiKey.revoked_at.is_(None))
        return session.scalar(live) is None

    def poll(self, session: Session, force: bool = False) -> tuple[bool, es.Page] | None:
        """None once the stream's key is revoked; else whether final, and the next rows."""
        if self.revoked(session):
            return None
        # Final first, then the rows: every row of a change already final is then in the log.
        done = self.done(session)
        return done, es.read_page(session, self.follow, self.cursor, force=force)


def _event(name: str, data: dict[str, Any], event_id: int | None = None) -> ServerSentEvent:
    body = json.dumps(data, separators=(",", ":"))
    return ServerSentEvent(data=body, event=name, id=None if event_id is None else str(event_id))


async def _events(stream: Stream, last_event_id: int | None, keep: bool) -> AsyncIterator[Any]:
    def start(session: Session) -> tuple[es.Cursor, dict[str, Any]]:
        cursor = es.start_cursor(session, stream.follow, last_event_id)
        return cursor, stream.state(session)

    # Subscribed before the start is read: a change committed in between still wakes us.
    with stream.hub.subscribe(stream.follow.keys) as sub:
        stream.cursor, snapshot = await stream.read(start)
        yield _event("snapshot", snapshot, stream.cursor.id)
        progress_at = time.monotonic()
        held_since: float | None = None
        while True:
            force = held_since is not None and time.monotonic() - held_since > HELD_BACK_MAX_SECONDS
            polled = await stream.read(partial(stream.poll, force=force))
            if polled is None:
                return  # key revoked: the client's reconnect gets the 401
            done, page = polled
            held_since = (held_since or time.monotonic()) if page.held_back else None
            for event in page.events:
                yield _event(event.type, event.data, event.id)
            if page.full:
                continue  # more rows already: read on at the client's pace
            batch = stream.follow.job_id is None
            if batch and page.events and time.monotonic() - progress_at >= PROGRESS_SECONDS:
                progress_at = time.monotonic()
                yield _event("batch.progress", await stream.read(stream.state))
            if done and not page.held_back and not keep:
                yield _event("end", await stream.read(stream.state))
                return
            await sub.wait(HELD_BACK_RETRY_SECONDS if page.held_back else stream.max_wait)


def _response(
    stream: Stream, settings: Any, header: int | None, query: int | None, keep: bool
) -> EventSourceResponse:
    stream.hub.start()
    return EventSourceResponse(
        _events(stream, header if header is not None else query, keep),
        ping=settings.sse_ping_seconds,
        send_timeout=SEND_TIMEOUT_SECONDS,
        # Proxies (nginx) must pass events on as they come, not buffer the response.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/v1/batches/{batch_id}/events",
    summary="Follow a batch's progress (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses=STREAM_RESPONSES,
)
def batch_events(
    request: Request,
    session: SessionDep,
    team: TeamDep,
    caller: CallerDep,
    settings: SettingsDep,
    batch_id: Annotated[uuid.UUID, Path(description="A batch id from POST /v1/batches.")],
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
    follow: Follow = False,
) -> EventSourceResponse:
    """A snapshot of the batch, then each job's transitions and review states as they happen,
    ``batch.progress`` counts, and ``end`` once every job is final."""
    batch = get_batch(session, team, batch_id)  # one being deleted reads as gone
    stream = Stream(request, es.Follow(team.id, batch.id), batch.job_count, caller.key_id)
    release_connection(session)  # the stream reads in its own short sessions
    return _response(stream, settings, last_event_id_header, last_event_id, follow)


@router.get(
    "/v1/jobs/{job_id}/events",
    summary="Follow a job (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses=STREAM_RESPONSES,
)
def job_events(
    request: Request,
    session: SessionDep,
    team: TeamDep,
    caller: CallerDep,
    settings: SettingsDep,
    job_id: Annotated[uuid.UUID, Path(description="A job id from POST /v1/jobs or a listing.")],
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
    follow: Follow = False,
) -> EventSourceResponse:
    """A snapshot of the job, then its transitions and review states, and ``end`` once it
    is final."""
    job = owned_job(session, job_id, team)
    stream = Stream(request, es.Follow(team.id, job.batch_id, job.id), None, caller.key_id)
    release_connection(session)
    return _response(stream, settings, last_event_id_header, last_event_id, follow)
