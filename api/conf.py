"""Settings of the API and the dashboard, with their environment defaults.

Each value is read from ``django.conf.settings`` at call time (so tests can override
it) and falls back to an environment variable read once at import through the strict
helpers of :mod:`smartcron_project.env`.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings

from smartcron_project.env import envint, envstr

_DEFAULTS: dict[str, object] = {
    # Secret for the keyed hash of API keys; empty = derived from SECRET_KEY (rotating
    # SECRET_KEY then invalidates every API key).
    "API_KEY_PEPPER": envstr("SMARTCRON_API_KEY_PEPPER", ""),
    # last_used_at is written at most this often per key (one UPDATE instead of one per request).
    "API_KEY_LAST_USED_SECONDS": envint("SMARTCRON_API_KEY_LAST_USED_SECONDS", 60, minimum=0),
    # Wrong API keys from one client IP before it gets 429s, and the window that counts them.
    "API_BAD_KEY_LIMIT": envint("SMARTCRON_API_BAD_KEY_LIMIT", 20, minimum=1),
    "API_BAD_KEY_WINDOW_SECONDS": envint("SMARTCRON_API_BAD_KEY_WINDOW", 300, minimum=1),
    # Reverse proxies in front of the web process that append to X-Forwarded-For (0 = use REMOTE_ADDR).
    "API_NUM_PROXIES": envint("SMARTCRON_API_NUM_PROXIES", 0, minimum=0, maximum=5),
    "API_PAGE_SIZE": envint("SMARTCRON_API_PAGE_SIZE", 50, minimum=1, maximum=1000),
    "API_MAX_PAGE_SIZE": envint("SMARTCRON_API_MAX_PAGE_SIZE", 500, minimum=1, maximum=5000),
    "DASHBOARD_PAGE_SIZE": envint("SMARTCRON_DASHBOARD_PAGE_SIZE", 50, minimum=5, maximum=500),
    # How long the computed 24 h load heatmap is reused (it simulates every job).
    "DASHBOARD_TIMELINE_CACHE_SECONDS": envint("SMARTCRON_TIMELINE_CACHE_SECONDS", 300, minimum=0),
}


def get(name: str):
    """The setting ``name`` (``settings.<name>`` wins over the environment default)."""
    return getattr(settings, name, _DEFAULTS[name])


def api_key_pepper() -> bytes:
    """The HMAC key API keys are hashed with."""
    pepper = str(get("API_KEY_PEPPER") or "")
    if pepper:
        return pepper.encode()
    # A sub-key, so that the raw SECRET_KEY is never used for two purposes.
    return hmac.new(settings.SECRET_KEY.encode(), b"smartcron.api.key-pepper.v1", hashlib.sha256).digest()
