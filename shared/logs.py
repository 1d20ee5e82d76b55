"""Logging for every entry point: one line per record, JSON in deployments, with context.

``configure_logging(settings)`` is called once by each command (api, worker, dispatcher,
flower, ...). Code that works on a job binds what it knows and every log line inside
carries it, without passing ids to each ``log.info``:

    with log_context(job_id=job.id, team=team.name):
        log.info("rendered")        # {"message": "rendered", "job_id": "...", "team": "..."}

The context lives in a ``contextvars.ContextVar``, so it follows a request through async code
and Starlette's thread pool, and a Celery task through its signals; it never leaks between
requests or tasks.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from shared.settings import Settings

# Fields a line about a job may carry, in the order the text format prints them.
CONTEXT_FIELDS = ("job_id", "job_ids", "batch_id", "team", "worker", "model", "task_id")

# One dict per scope (a request, a task). ``bind_log_context`` updates it in place: FastAPI
# runs sync dependencies and endpoints in copies of the request's context, and a binding
# made in the auth dependency must still be seen by the endpoint, which only a shared
# mutable dict achieves. ``log_context`` opens a new scope (a fresh dict) and closes it.
_context: ContextVar[dict[str, str] | None] = ContextVar("imgfarm_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _clean(fields: Mapping[str, object]) -> dict[str, str]:
    # None means "not known": leave the field out rather than logging "None".
    return {k: str(v) for k, v in fields.items() if v is not None}


def current_log_context() -> dict[str, str]:
    """A copy of the fields bound in the current scope."""
    return dict(_context.get() or {})


def bind_log_context(**fields: object) -> None:
    """Add ``fields`` to the current scope (a request or task), for all its later lines."""
    scope = _context.get()
    if scope is None:
        scope = {}
        _context.set(scope)
    scope.update(_clean(fields))


@contextmanager
def log_context(**fields: object) -> Iterator[dict[str, str]]:
    """A new scope inheriting the current fields plus ``fields``; restored on exit."""
    scope = {**(_context.get() or {}), **_clean(fields)}
    token = _context.set(scope)
    try:
        yield scope
    finally:
        _context.reset(token)


def clear_log_context() -> None:
    """Forget every bound field (end of a Celery task: the worker process lives on)."""
    _context.set(None)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.job_id`` ...), never overriding
    a field given explicitly with ``extra=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # default=str: ids (UUID), paths and datetimes passed in extra= still serialize.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the context fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if hasattr(record, key)
        )
        if not context:
            return line
        # Keep the traceback (if any) after the context, on its own lines.
        first, sep, rest = line.partition("\n")
        return f"{first} [{context}]{sep}{rest}"


class _ImgfarmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so a second ``configure_logging`` replaces it."""


def make_handler(log_format: str, stream: Any = None) -> logging.Handler:
    """A stream handler with our formatter and the context filter."""
    handler = _ImgfarmHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Send every logger's records to stderr in ``settings.log_format`` at its log level.

    Idempotent. Also tells Celery that logging is configured, so a worker started in this
    process keeps our format instead of installing its own handlers.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ImgfarmHandler)]:
        root.removeHandler(old)
    root.addHandler(make_handler(settings.log_format, stream))
    root.setLevel(settings.log_level.upper())
    # uvicorn and Flower (tornado) log through their own named loggers; make them reach
    # the root handler instead of printing in another format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "tornado"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    _connect_celery()


def _celery_logging_is_ours(**_: Any) -> None:
    """Receiver of Celery's ``setup_logging``: its mere presence stops Celery's own setup."""


def task_log_fields(task: Any, args: Any) -> dict[str, object]:
    """What a task's lines should carry: its id, worker, model queue and the job ids it got.

    Render tasks carry job ids as arguments (one id, or a list for a batch).
    """
    request = getattr(task, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    queue = str(delivery.get("routing_key") or "")
    ids = [str(a) for a in _flatten(args or ()) if isinstance(a, str)]
    fields: dict[str, object] = {
        "task_id": getattr(request, "id", None),
        "worker": getattr(request, "hostname", None),
        "model": queue.removeprefix("render.") if queue.startswith("render.") else None,
    }
    if len(ids) == 1:
        fields["job_id"] = ids[0]
    elif ids:
        fields["job_ids"] = ",".join(ids)
    return fields


def _flatten(values: Any) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list | tuple):
            yield from value
        else:
            yield value


def _bind_task_context(task: Any = None, args: Any = None, **_: Any) -> None:
    clear_log_context()
    bind_log_context(**task_log_fields(task, args))


def _clear_task_context(**_: Any) -> None:
    clear_log_context()


def _connect_celery() -> None:
    try:
        from celery import signals
    except ImportError:  # pragma: no cover - celery is a dependency; be safe anyway
        return
    # weak=False: the receivers must outlive this call; dispatch_uid: connect once.
    signals.setup_logging.connect(
        _celery_logging_is_ours, weak=False, dispatch_uid="imgfarm-logging"
    )
    # Every line a task logs (ours, Celery's "succeeded in 0.4s") names its job(s).
    signals.task_prerun.connect(_bind_task_context, weak=False, dispatch_uid="imgfarm-log-ctx")
    signals.task_postrun.connect(_clear_task_context, weak=False, dispatch_uid="imgfarm-log-ctx")


class LogContextMiddleware:
    """ASGI middleware: each HTTP request gets its own log scope, so what a dependency binds
    (the team, after authentication) is on every later line of that request only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with log_context():
            await self.app(scope, receive, send)
