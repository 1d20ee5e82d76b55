"""API keys: random tokens shown once, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "imf_"


def new_api_key() -> str:
    # 256 bits of randomness: a plain SHA-256 is enough to store it (no salt or
    # slow hash needed, unlike passwords, since it cannot be guessed).
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and logs."""
    return key[: len(KEY_PREFIX) + 6]
