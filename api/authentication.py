"""Authentication for the API: ``Authorization: Bearer <key>`` / ``X-API-Key``, or a staff session.

Reusable by any DRF view (e.g. the peer schedule endpoint): put
:class:`ApiKeyAuthentication` in ``authentication_classes`` and one of the permission
classes of :mod:`api.permissions`.
"""

from __future__ import annotations

import logging

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from api import conf, keys
from api.models import ApiKey
from api.throttling import BadKeyThrottle, client_ip

log = logging.getLogger(__name__)

# Hash compared when the prefix matches no key, so that unknown and wrong keys take as long.
_DUMMY_HASH = "0" * 64


class ApiKeyPrincipal:
    """``request.user`` of a request authenticated by an API key (not a Django user)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, key: ApiKey) -> None:
        self.api_key = key
        self.username = f"apikey:{key.name}"

    def __str__(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj=None) -> bool:
        return False


def presented_key(request: Request) -> str | None:
    """The key in ``Authorization: Bearer`` or ``X-API-Key``; None when neither is there."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    bearer = None
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer = value.strip()
    other = request.META.get("HTTP_X_API_KEY", "").strip() or None
    if bearer and other and bearer != other:
        raise exceptions.AuthenticationFailed("Authorization and X-API-Key carry different keys")
    return bearer or other


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticate with an API key; wrong keys are counted per client IP and throttled."""

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        raw = presented_key(request)
        if raw is None:
            return None
        ip = client_ip(request)
        throttle = BadKeyThrottle(ip)
        if throttle.blocked():
            raise exceptions.Throttled(wait=throttle.wait, detail="too many invalid API keys from this address")
        key = self._lookup(raw)
        if key is None:
            count = throttle.failed()
            # The key itself is never logged, not even its prefix: a typo'd key is still a secret.
            log.warning("invalid API key from %s (%d in this window)", ip, count)
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API key")
        key.touch(ip, int(conf.get("API_KEY_LAST_USED_SECONDS")))
        return ApiKeyPrincipal(key), key

    @staticmethod
    def _lookup(raw: str) -> ApiKey | None:
        prefix = keys.parse_prefix(raw)
        key = ApiKey.objects.usable().filter(prefix=prefix).first() if prefix else None
        ok = keys.matches(raw, key.key_hash if key else _DUMMY_HASH)
        return key if key is not None and ok else None

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to requests without credentials.
        return 'Bearer realm="smartcron"'


class StaffSessionAuthentication(SessionAuthentication):
    """The admin's session (CSRF enforced on writes by DRF); staff is checked by the permissions."""
