"""Refuse oversized request bodies while they stream, before anything parses them.

Without it a 200 MB JSON body was read whole, parsed, then base64-decoded before the data
URL's size check: the api grew from 164 MB to 987 MB to answer 413. Here a declared
``Content-Length`` over the limit is answered at once (nothing read), and a body without
one (chunked) is counted as it arrives and cut as soon as it passes the limit, so the api
holds at most the limit.

Hand-written rather than FastAPI's ``max_body_size``: that answers a declared oversize
body in plain text, not the api's error shape (``api/errors.py``), and takes its limits
when routes are defined, while ours come from ``Settings`` when the app is built.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.errors import ErrorBody, FieldError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    """413 for bodies over ``limit``; multipart bodies to ``multipart_paths`` get
    ``multipart_limit`` (Starlette spools their files to disk, not memory)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        multipart_limit: int,
        multipart_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.limit = limit
        self.multipart_limit = multipart_limit
        self.multipart_paths = multipart_paths

    def limit_for(self, scope: Scope) -> int:
        if scope["path"] in self.multipart_paths and _header(scope, b"content-type").startswith(
            "multipart/form-data"
        ):
            return self.multipart_limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)  # the body is never read
            return
        await _Counted(self.app, limit)(scope, receive, send)


class _Counted:
    """One request whose body is counted as it arrives (chunked, or a lying length)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.received = 0
        self.started = False
        self.refused = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.refused = True
                    if not self.started:
                        await _refuse(send, self.limit)
                    # To the app the client is gone: it stops reading and answers no one.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.refused:
                return  # the 413 was the answer
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            # The app's reaction to the "disconnect" (ClientDisconnect, a 400): answered.
            if not self.refused:
                raise


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return ""


async def _refuse(send: Send, limit: int) -> None:
    message = f"request body is larger than {limit} bytes"
    body = ErrorBody(detail=message, errors=[FieldError(field="body", message=message)])
    payload = json.dumps(body.model_dump()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
