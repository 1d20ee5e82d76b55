"""Refuse URLs that would make us fetch from, or call into, private networks (SSRF)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from shared.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def is_allowed_address(addr: IPAddress, allowed: list[Network]) -> bool:
    """Public unicast addresses only, unless the operator allowed a private range."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allowed):
        return True
    return addr.is_global and not addr.is_multicast


def resolve_public(url: str, field: str, allowed: list[Network]) -> list[IPAddress]:
    """Check scheme and host of ``url`` and every address it resolves to; return them."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(field, "URL must use http or https")
    if not parts.hostname:
        raise InvalidRequest(field, "URL has no host")
    if parts.username or parts.password:
        raise InvalidRequest(field, "URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # getaddrinfo also normalises decimal/octal/hex spellings like 2130706433.
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise InvalidRequest(field, f"cannot resolve host {parts.hostname!r}") from e
    addrs = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for addr in addrs:
        if not is_allowed_address(addr, allowed):
            raise InvalidRequest(field, f"URL resolves to a non-public address ({addr})")
    return addrs
