"""Reading Server-Sent Events in tests, as a browser's EventSource reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field


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
