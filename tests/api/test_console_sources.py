"""The console's scripts, read as shipped: no HTML sink (user text reaches the page only as
text nodes and attributes, api/console/static/dom.js), no string-to-code, and the key is
sent only in the Authorization header, never put in a URL or a link."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "api" / "console" / "static"
SINKS = re.compile(
    r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(|new Function\("
    r"|createContextualFragment|srcdoc"
)


def _scripts() -> dict[str, str]:
    scripts = {p.name: p.read_text() for p in STATIC.glob("*.js")}
    assert len(scripts) >= 5, scripts.keys()
    return scripts


def test_no_script_builds_markup_or_code_from_strings() -> None:
    found = [
        (name, n, line.strip())
        for name, text in _scripts().items()
        for n, line in enumerate(text.splitlines(), 1)
        if SINKS.search(line)
    ]
    assert not found, found


def test_the_key_never_goes_into_a_url() -> None:
    """Every read of the key is a header or a presence check, never part of a URL."""
    url_like = re.compile(r"href|src|URLSearchParams|new URL|\.open\(|fetch\(|\?\w+=")
    uses = [
        (name, line.strip())
        for name, text in _scripts().items()
        for line in text.splitlines()
        if "getKey()" in line and "export const getKey" not in line
    ]
    assert any("Authorization" in line for _, line in uses), uses
    assert not [u for u in uses if url_like.search(u[1])], uses
    for name, text in _scripts().items():
        assert "EventSource(" not in text, f"{name}: EventSource cannot send the key in a header"
