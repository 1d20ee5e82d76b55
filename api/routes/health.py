"""Health checks, the only routes without an API key."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SessionDep, StorageDep
from shared.errors import StorageConfigError

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _probe(check: Callable[[], object]) -> str:
    try:
        check()
    except StorageConfigError as e:
        # Only an operator can fix it: say what to fix (readiness is internal-facing).
        log.error("readiness check failed: %s", e)
        return f"error: {e}"
    except Exception as e:  # readiness reports any failure, it does not raise
        log.warning("readiness check failed: %s", e)
        return f"error: {type(e).__name__}"
    return "ok"


@router.get("/readyz")
def readyz(session: SessionDep, storage: StorageDep) -> JSONResponse:
    """Readiness: the database and storage answer.

    The broker is not checked: the api never talks to it (the dispatcher hands committed
    jobs to Redis), so a Redis outage must not take api pods out of the Service while
    submissions still answer 202.
    """
    checks = {
        "database": _probe(lambda: session.execute(text("SELECT 1"))),
        "storage": _probe(storage.check),
    }
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
