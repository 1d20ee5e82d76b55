"""The SSRF guard refuses private, loopback, link-local and metadata addresses."""

from __future__ import annotations

import ipaddress

import pytest

from shared.errors import InvalidRequest
from shared.netguard import is_allowed_address, parse_networks, resolve_public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://10.0.0.5/x.png",
        "http://192.168.1.1/x.png",
        "http://172.16.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x.png",
        "http://[::1]/x.png",
        "http://[fd00::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://2130706433/x.png",
        "http://0x7f000001/x.png",
        "http://0177.0.0.1/x.png",
        "http://0.0.0.0/x.png",
        "ftp://example.com/x.png",
        "file:///etc/passwd",
        "http://user:pw@example.com/x.png",
    ],
)
def test_hostile_urls_are_refused(url):
    with pytest.raises(InvalidRequest) as e:
        resolve_public(url, "image", [])
    assert e.value.field == "image"


def test_public_address_allowed_and_operator_allowlist():
    assert is_allowed_address(ipaddress.ip_address("93.184.216.34"), [])
    assert not is_allowed_address(ipaddress.ip_address("127.0.0.1"), [])
    assert is_allowed_address(ipaddress.ip_address("127.0.0.1"), parse_networks(["127.0.0.0/8"]))
    assert resolve_public("http://127.0.0.1:9/x", "image", parse_networks(["127.0.0.1/32"]))
