"""Reading Server-Sent Events in tests, as a browser's EventSource reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Sse:
    """One parsed event; a ``: comment`` line (keep-alive) comes back as event ``comment``."""

    event: str
    data: dict[str, object] = field(default_factory=dict)
    id: str | None = None


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    """The text/event-stream format: fields until a blank line, comments on their own."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\r")
        if line.startswith(":"):
            yield Sse("comment")
        elif line == "":
            if fields:
                data = json.loads(fields["data"])
                yield Sse(fields.get("event", "message"), data, fields.get("id"))
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def stream(
    url: str, key: str, *, last_event_id: str | None = None, until: int | None = None
) -> list[Sse]:
    """Read a stream until it ends, or until ``until`` job events came (then hang up)."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    seen: list[Sse] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in parse(r.iter_lines()):
            if event.event != "comment":
                seen.append(event)
            if until is not None and sum(e.event.startswith("job.") for e in seen) >= until:
                break
    return seen
