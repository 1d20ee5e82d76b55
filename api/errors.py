"""The one place that maps domain errors to HTTP answers."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from shared.errors import (
    ImgfarmError,
    InvalidRequest,
    NotFound,
    StorageConfigError,
    StorageError,
    TransientError,
)

log = logging.getLogger(__name__)
# Pydantic names which member of a union failed in the location (``pairing.list[PairRef][0]``
# for ``"cross" | list[PairRef]``); fields never carry brackets in their names.
UNION_MEMBER = re.compile(r"[a-z-]+\[.*\]")


class Unauthorized(ImgfarmError):
    """No API key, or one we do not know."""


class Forbidden(ImgfarmError):
    """The key is valid but may not do this: a member key on an admin route, or a team's
    quota reached (api/quotas.py). 403; the message names what is needed or the limit."""


class TooBusy(ImgfarmError):
    """Over a concurrency bound (api/fetch_slots.py) or the team's submission rate
    (api/quotas.py): 429 with Retry-After, never queued."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FieldError(BaseModel):
    field: str = Field(
        description="The field at fault as the api spells it: `strength`, `images[1].sku`, "
        "`metadata.tags[0]`, a header (`Idempotency-Key`) or `body`."
    )
    message: str = Field(description="What is wrong with it, for people.")


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` for people, ``errors`` naming each field at fault."""

    detail: str = Field(description="The whole refusal in one line, for people.")
    errors: list[FieldError] = Field(
        description="Each field at fault (empty when no one field is: auth, not found, outages)."
    )


# What each error status means, once: routes declare which they answer with errors_for().
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request cannot be taken as sent (a multipart body that does not parse, a "
    "presigned upload on a farm without S3).",
    401: "No API key, or one that is unknown or revoked (`Authorization: Bearer <key>`).",
    403: "The key may not do this: a `member` key on a route that needs an `admin` one, or "
    "the team's queued-jobs or monthly-images quota reached (the message names the limit "
    "and the current use); nothing was written.",
    404: "No such resource for this team (another team's id reads the same), or an upload "
    "id in the body that is not the team's.",
    409: "Conflicts with what exists: an Idempotency-Key reused with another body or still "
    "in progress, a delivery whose endpoint is disabled, or a review decision on a job that "
    "has not succeeded (the message names its state).",
    413: "Too large: the request body, an image's bytes, or its pixel count.",
    422: "A field is invalid: `errors` names each one; nothing was written.",
    429: "The api is fetching as many image URLs as it may (per team or in all), or the team "
    "is over its submission rate: retry after `Retry-After` seconds.",
    503: "A backing service (database, storage) is unavailable: retry after `Retry-After` seconds.",
}


def errors_for(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the error body. Listing a
    422 also keeps FastAPI from documenting its own validation body, which ours replaces."""
    return {s: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


# What every keyed route may answer, whatever it does.
KEYED_ERRORS = errors_for(401, 503)


# What a 503 asks clients to wait: storage and database blips last seconds, not minutes.
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def _body(detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {"detail": detail, "errors": errors or []}


def _field_name(loc: tuple[object, ...]) -> str:
    """Pydantic's location as the api spells fields everywhere: ``images[1].sku``,
    ``metadata.tags[0]`` (the same as the checks that raise InvalidRequest)."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]  # where it came from, not which field
    name = ""
    for part in loc:
        if isinstance(part, str) and UNION_MEMBER.fullmatch(part):
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return JSONResponse(
        _body(str(exc), [{"field": exc.field, "message": exc.message}]),
        status_code=exc.status_code,
    )


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field_name(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(_body(detail, errors), status_code=422)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    # Raised by the framework itself (a body that does not parse: 400): same body as ours.
    assert isinstance(exc, HTTPException)
    return JSONResponse(_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body(str(exc) or "not found"), status_code=404)


async def _unauthorized(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body(str(exc)), status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable: %s", exc)
    return JSONResponse(
        _body("a backing service is unavailable; retry shortly"),
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    )


async def _misconfigured(_: Request, exc: Exception) -> JSONResponse:
    # 500, not 503: a 503 tells clients (ours retries it) that waiting helps, and this
    # will not heal by itself. The details (bucket names, which variable) are the
    # operators': they go to the log and /readyz, not to the client.
    log.error("storage is misconfigured: %s", exc)
    return JSONResponse(
        _body(
            "the farm's object storage is misconfigured; retrying will not help until its "
            "operators fix it (GET /readyz names the cause)"
        ),
        status_code=500,
    )


async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body(str(exc)), status_code=403)


async def _too_busy(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooBusy)
    return JSONResponse(
        _body(str(exc)), status_code=429, headers={"Retry-After": str(exc.retry_after)}
    )


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(InvalidRequest, _invalid)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(TooBusy, _too_busy)
    app.add_exception_handler(TransientError, _unavailable)
    app.add_exception_handler(StorageError, _unavailable)
    app.add_exception_handler(StorageConfigError, _misconfigured)
