"""Refuse URLs that would make us fetch from, or call into, private networks (SSRF).

Two checks: ``resolve_public`` at submit time (a 4xx naming the field), and
``guarded_client`` at connect time, which resolves the host once, checks every address and
dials exactly the address it checked (so a DNS answer that changes between the two checks,
DNS rebinding, cannot reach inside). TLS still verifies the certificate for the hostname.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses to dial; tests hand in their own to play DNS rebinding.
Resolver = Callable[[str, int], list[IPAddress]]


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The system's answer for ``host``; getaddrinfo also normalises decimal/octal/hex
    spellings like 2130706433 or 0x7f.1 to the address they mean."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def is_allowed_address(addr: IPAddress, allowed: list[Network]) -> bool:
    """Public unicast addresses only, unless the operator allowed a private range."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allowed):
        return True
    return addr.is_global and not addr.is_multicast


def resolve_public(
    url: str, field: str, allowed: list[Network], resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """Check scheme and host of ``url`` and every address it resolves to; return them."""
    try:
        parts = urlsplit(url)
    except ValueError as e:  # "http://[::1": an unclosed IPv6 bracket
        raise InvalidRequest(field, f"is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(field, "URL must use http or https")
    if not parts.hostname:
        raise InvalidRequest(field, "URL has no host")
    if parts.username or parts.password:
        raise InvalidRequest(field, "URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addrs = resolver(parts.hostname, port)
    except (OSError, UnicodeError, ValueError) as e:
        raise InvalidRequest(field, f"cannot resolve host {parts.hostname!r}") from e
    for addr in addrs:
        if not is_allowed_address(addr, allowed):
            raise InvalidRequest(field, f"URL resolves to a non-public address ({addr})")
    return addrs


# --- connect time ---------------------------------------------------------------------------


class BlockedAddress(httpcore.ConnectError):
    """The host resolved, at connect time, to an address we never dial."""


def is_blocked(exc: BaseException) -> bool:
    """Whether ``exc`` (an httpx error) was the connect-time guard refusing an address."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedAddress):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _remaining(
    deadline: float | None, timeout: float | None, error: type[Exception]
) -> float | None:
    """``timeout`` cut to what is left before ``deadline`` (monotonic); ``error`` once none is."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the overall deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by one deadline: httpx's timeouts are
    per operation, so a server sending a byte a second would otherwise never time out."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(
            max_bytes, _remaining(self._deadline, timeout, httpcore.ReadTimeout)
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _remaining(self._deadline, timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, but it resolves the host itself, refuses the connection
    if any address is not allowed, and dials only the addresses it checked. With a
    ``deadline`` (``time.monotonic()``), every connection it makes ends by then."""

    def __init__(
        self,
        allowed: list[Network],
        resolver: Resolver = system_resolver,
        deadline: float | None = None,
    ) -> None:
        self.allowed = allowed
        self.resolver = resolver
        self.deadline = deadline
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addrs = self.resolver(host, port)
        except (OSError, UnicodeError, ValueError) as e:
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {e}") from e
        if not addrs:
            raise httpcore.ConnectError(f"host {host!r} has no address")
        # Same rule as submit time: one private answer refuses the host.
        for addr in addrs:
            if not is_allowed_address(addr, self.allowed):
                raise BlockedAddress(f"{host!r} resolves to a non-public address ({addr})")
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for addr in addrs:
            try:
                # The checked IP literal is dialled; httpcore still sends SNI and checks the
                # certificate for ``host`` (the request URL keeps the name, and the Host header).
                stream = self._sockets.connect_tcp(
                    str(addr),
                    port,
                    _remaining(self.deadline, timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
                continue
            return stream if self.deadline is None else DeadlineStream(stream, self.deadline)
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise BlockedAddress("unix sockets are never dialled")


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on a ``GuardedBackend``; never reads proxies from the environment
    (a proxy would dial for us and bypass the check)."""

    def __init__(
        self,
        allowed: list[Network],
        *,
        resolver: Resolver = system_resolver,
        verify: bool = True,
        deadline: float | None = None,
    ) -> None:
        super().__init__(verify=verify, trust_env=False)
        # httpx has no public hook for the network backend: swap the pool it built for one
        # on our backend (tests/shared/test_ssrf.py proves the guard is in the path).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            network_backend=GuardedBackend(allowed, resolver, deadline),
            retries=0,
        )


def guarded_client(
    allowed: list[Network],
    *,
    timeout: float,
    resolver: Resolver = system_resolver,
    deadline: float | None = None,
) -> httpx.Client:
    """An httpx client that connects only to allowed addresses and follows no redirect
    (a caller that follows them re-checks each hop with ``resolve_public``). ``timeout``
    bounds each operation; ``deadline`` (``time.monotonic()``) all of them together."""
    return httpx.Client(
        transport=GuardedTransport(allowed, resolver=resolver, deadline=deadline),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
