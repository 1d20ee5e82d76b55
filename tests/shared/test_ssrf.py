"""The SSRF matrix: hostile URLs are refused at submit time (``resolve_public``) and again at
connect time (``guarded_client``), including a host whose DNS answer turns private between
the two checks (DNS rebinding). Nothing here needs the internet."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import httpx
import pytest

from api.sources import fetch_url
from shared.errors import InvalidRequest
from shared.netguard import (
    IPAddress,
    guarded_client,
    is_blocked,
    parse_networks,
    resolve_public,
)
from shared.settings import Settings
from tests.receiver import Receiver

# Every one must be refused. Only localhost and IP spellings: nothing needs DNS.
HOSTILE = [
    "http://127.0.0.1/x",
    "http://127.1/x",  # short form of 127.0.0.1
    "http://localhost/x",
    "http://0.0.0.0/x",
    "http://0/x",
    "http://10.0.0.5/x",
    "http://172.16.0.1/x",
    "http://192.168.1.1/x",
    "http://100.64.0.1/x",  # CGNAT
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://169.254.0.1/x",  # link-local
    "http://224.0.0.1/x",  # multicast
    "http://255.255.255.255/x",
    "http://2130706433/x",  # decimal 127.0.0.1
    "http://0x7f000001/x",  # hex
    "http://0177.0.0.1/x",  # octal
    "http://0xa9.0xfe.0xa9.0xfe/x",  # hex dotted 169.254.169.254
    "http://017700000001/x",  # octal whole
    "http://[::1]/x",
    "http://[::]/x",
    "http://[fd00::1]/x",  # ULA
    "http://[fe80::1]/x",  # link-local
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped
    "http://[::ffff:169.254.169.254]/x",
    "http://[::ffff:a9fe:a9fe]/x",  # IPv4-mapped, hex
    "https://127.0.0.1:8443/x",
    "http://127.0.0.1:6379/",  # our own Redis port
    "http://[::ffff:10.0.0.1]:5432/",
]
NOT_HTTP = ["ftp://example.com/x", "file:///etc/passwd", "gopher://127.0.0.1/x"]
WITH_CREDENTIALS = ["http://user:pw@127.0.0.1/x"]


def test_matrix_has_enough_hostile_urls():
    assert len(HOSTILE) + len(NOT_HTTP) + len(WITH_CREDENTIALS) >= 20


@pytest.mark.parametrize("url", HOSTILE + NOT_HTTP + WITH_CREDENTIALS)
def test_refused_at_submit_time(url):
    with pytest.raises(InvalidRequest) as e:
        resolve_public(url, "webhook_url", [])
    assert e.value.field == "webhook_url"


@pytest.mark.parametrize("url", HOSTILE)
def test_refused_at_connect_time(url):
    """Even if submit time were skipped, the transport never dials these addresses."""
    with (
        guarded_client([], timeout=2) as client,
        pytest.raises((httpx.HTTPError, httpx.InvalidURL)) as e,
    ):
        client.post(url, content=b"{}")
    # Refused by the guard (never dialled), or a spelling httpx will not even parse.
    assert isinstance(e.value, httpx.InvalidURL) or is_blocked(e.value), e.value


@pytest.mark.parametrize("url", NOT_HTTP)
def test_other_schemes_never_sent(url):
    with guarded_client([], timeout=2) as client, pytest.raises(httpx.UnsupportedProtocol):
        client.post(url, content=b"{}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def flipping_resolver(first: str, then: str):
    """A DNS that answers ``first`` once, then ``then``: a rebinding attacker's."""
    answers = [ipaddress.ip_address(first)]

    def resolve(host: str, port: int) -> list[IPAddress]:
        if answers:
            return [answers.pop()]
        return [ipaddress.ip_address(then)]

    return resolve


def test_dns_rebinding_is_refused_at_connect_time(receiver):
    resolve = flipping_resolver("93.184.216.34", "127.0.0.1")
    url = f"http://rebind.test:{receiver.port}/hook"
    # Submit time sees a public address and accepts...
    assert resolve_public(url, "webhook_url", [], resolver=resolve)
    # ...connect time resolves again, sees loopback, and never dials it.
    with (
        guarded_client([], timeout=2, resolver=resolve) as client,
        pytest.raises(httpx.ConnectError) as e,
    ):
        client.post(url, content=b"{}")
    assert is_blocked(e.value)
    assert receiver.requests() == []


def test_guard_dials_the_address_it_checked_with_the_hostname_kept(receiver):
    """The resolved IP is what gets dialled; the Host header still names the host."""
    pinned = lambda host, port: [ipaddress.ip_address("127.0.0.1")]  # noqa: E731
    with guarded_client(parse_networks(["127.0.0.0/8"]), timeout=5, resolver=pinned) as client:
        answer = client.post(f"http://hooks.customer.test:{receiver.port}/in", content=b"{}")
    assert answer.status_code == 200
    (request,) = receiver.requests("/in")
    assert request.headers["host"] == f"hooks.customer.test:{receiver.port}"


def test_allowlisted_private_range_is_reachable(receiver):
    with guarded_client(parse_networks(["127.0.0.0/8"]), timeout=5) as client:
        assert client.post(receiver.url("/ok"), content=b"{}").status_code == 200
    assert len(receiver.requests("/ok")) == 1


def test_image_fetch_refuses_a_redirect_to_the_metadata_address(receiver):
    receiver.on("/x.png", 302, {"location": "http://169.254.169.254/latest/meta-data/"})
    settings = Settings(allow_private_networks="127.0.0.0/8")
    with pytest.raises(InvalidRequest) as e:
        fetch_url(receiver.url("/x.png"), "image", settings)
    assert e.value.field == "image" and "non-public" in e.value.message
    assert len(receiver.requests("/x.png")) == 1


def test_image_fetch_refuses_dns_rebinding(monkeypatch, receiver):
    """fetch_url's submit-time check sees a public answer; its connection sees loopback."""
    real = socket.getaddrinfo
    calls = {"n": 0}

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        calls["n"] += 1
        ip = "93.184.216.34" if calls["n"] == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(InvalidRequest) as e:
        fetch_url(f"http://rebind.test:{receiver.port}/x.png", "image", Settings())
    assert e.value.field == "image" and "non-public" in e.value.message
    assert calls["n"] == 2 and receiver.requests() == []
