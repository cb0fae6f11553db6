"""Who may do what: API key scopes, and staff sessions (with their Django permissions).

- :class:`IsReadOnlyKey`: any valid key (read-only or read-write) or a staff session;
- :class:`IsReadWriteKey`: a read-write key, or a staff session whose user holds the
  view's ``write_permission`` (default ``jobs.change_job``);
- :class:`ScopedAccess` (the default): reads need the first, writes the second.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from api.models import ApiKey

DEFAULT_WRITE_PERMISSION = "jobs.change_job"


def api_key_of(request: Request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


def is_staff_session(request: Request) -> bool:
    user = request.user
    return (api_key_of(request) is None and user is not None and user.is_authenticated
            and user.is_active and user.is_staff)


class IsReadOnlyKey(BasePermission):
    """Read access: any valid API key, or a logged-in staff user."""

    message = "an API key or a staff login is needed"

    def has_permission(self, request: Request, view) -> bool:
        return api_key_of(request) is not None or is_staff_session(request)


class IsReadWriteKey(BasePermission):
    """Write access: a read-write API key, or a staff user holding the view's write permission."""

    message = "this needs a read-write API key (or a staff login with the permission to change jobs)"

    def has_permission(self, request: Request, view) -> bool:
        key = api_key_of(request)
        if key is not None:
            return key.can_write
        if is_staff_session(request):
            return request.user.has_perm(getattr(view, "write_permission", DEFAULT_WRITE_PERMISSION))
        return False


class ScopedAccess(BasePermission):
    """Safe methods need read access, everything else write access."""

    def has_permission(self, request: Request, view) -> bool:
        if request.method in SAFE_METHODS:
            allowed, check = IsReadOnlyKey().has_permission(request, view), IsReadOnlyKey
        else:
            allowed, check = IsReadWriteKey().has_permission(request, view), IsReadWriteKey
        if not allowed:
            self.message = check.message
        return allowed
