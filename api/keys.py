"""API key format, generation and keyed hashing.

A key looks like ``sck_<prefix>_<secret>``: the 12 hex digit prefix is stored in clear
(to find the row, and to show which key is which), the whole key only as
HMAC-SHA256(pepper, key).  Comparisons are constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from api import conf

KEY_PREFIX = "sck"
PREFIX_HEX = 12
# Anything longer is not one of our keys: refuse it before hashing megabytes.
MAX_KEY_LENGTH = 128
_KEY_RE = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{PREFIX_HEX}}})_([A-Za-z0-9_-]{{32,80}})$")


def new_key() -> tuple[str, str]:
    """A fresh (full key, lookup prefix)."""
    prefix = secrets.token_hex(PREFIX_HEX // 2)
    return f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_prefix(raw: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    if not raw or len(raw) > MAX_KEY_LENGTH:
        return None
    match = _KEY_RE.match(raw)
    return match.group(1) if match else None


def hash_key(raw: str) -> str:
    return hmac.new(conf.api_key_pepper(), raw.encode(), hashlib.sha256).hexdigest()


def matches(raw: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(raw), stored_hash)
