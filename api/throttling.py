"""Throttle clients that present wrong API keys (brute-force guard), per client IP.

Counted in the Django cache in fixed windows; once an IP reached the limit, every key
it presents is refused with 429 until the window ends, without being checked.
"""

from __future__ import annotations

import time

from django.core.cache import cache
from django.http import HttpRequest

from api import conf


def client_ip(request: HttpRequest) -> str:
    """The client address; X-Forwarded-For is trusted only for the configured proxy hops."""
    remote = request.META.get("REMOTE_ADDR") or "unknown"
    proxies = int(conf.get("API_NUM_PROXIES"))
    if not proxies:
        return remote
    forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    if not forwarded:
        return remote
    # Each trusted proxy appended one address; the one before them is the client's.
    return forwarded[-min(proxies, len(forwarded))]


class BadKeyThrottle:
    """Counts failed API key attempts of one client IP."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.window = int(conf.get("API_BAD_KEY_WINDOW_SECONDS"))
        self.limit = int(conf.get("API_BAD_KEY_LIMIT"))
        now = time.time()
        self.bucket = int(now // self.window)
        self.wait = max(1, int((self.bucket + 1) * self.window - now))
        self.key = f"smartcron:api:badkey:{self.ip}:{self.bucket}"

    def blocked(self) -> bool:
        return int(cache.get(self.key, 0)) >= self.limit

    def failed(self) -> int:
        """Record one failure; returns the count in this window."""
        cache.add(self.key, 0, timeout=self.window + 1)
        try:
            return cache.incr(self.key)
        except ValueError:  # expired between add and incr
            cache.set(self.key, 1, timeout=self.window + 1)
            return 1
