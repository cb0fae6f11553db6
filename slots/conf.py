"""Settings of the slots app (admission, waiting queue, host memory guard).

Each value is ``settings.<NAME>`` when the project (or a test) sets it, else the
environment variable ``SMARTCRON_<NAME>`` (listed in ``.env.example``), else the default.
Values are read on every access (module ``__getattr__``), so a test that changes
``django.conf.settings`` sees the change at once and nothing is frozen at import time.

    from slots import conf
    conf.HOST_MEMORY_RESERVE_MB
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from smartcron_project.env import envbool, envfloat, envint, envstr

GUARD_POLICIES = ("pause", "kill", "none")


def _policy() -> str:
    value = envstr("SMARTCRON_HOST_GUARD_POLICY", "pause").strip().lower()
    if value not in GUARD_POLICIES:
        raise ImproperlyConfigured(f"SMARTCRON_HOST_GUARD_POLICY={value!r} must be one of {', '.join(GUARD_POLICIES)}")
    return value


def _priorities() -> tuple[str, ...]:
    raw = envstr("SMARTCRON_HOST_GUARD_PRIORITIES", "low")
    values = tuple(p.strip().lower() for p in raw.split(",") if p.strip())
    allowed = {"critical", "high", "medium", "low"}
    bad = [p for p in values if p not in allowed]
    if bad:
        raise ImproperlyConfigured(f"SMARTCRON_HOST_GUARD_PRIORITIES: unknown priority {bad[0]!r}")
    return values


# NAME -> reader of the environment default.  The env variable names are spelled out
# literally so that tests/test_deploy.py can check that .env.example lists them.
_DEFAULTS: dict[str, Callable[[], Any]] = {
    # A waiting run is re-tried after ADMISSION_RETRY_MS, then less and less often (x1.5
    # per attempt) up to this; lease releases and finished dependencies wake it at once.
    "ADMISSION_RETRY_MAX_MS": lambda: envint("SMARTCRON_ADMISSION_RETRY_MAX_MS", 2000, minimum=50),
    # A waiting-queue entry (priority order) that is not refreshed for this long is
    # dropped, so a run whose start task vanished cannot hold the slot's queue.
    "WAITING_TTL_SECONDS": lambda: envfloat("SMARTCRON_WAITING_TTL_SECONDS", 10.0, minimum=1.0),
    # Host memory guard (runs as a thread inside every slot worker).
    "HOST_GUARD": lambda: envbool("SMARTCRON_HOST_GUARD", True),
    "HOST_MEMORY_RESERVE_MB": lambda: envint("SMARTCRON_HOST_MEMORY_RESERVE_MB", 512, minimum=0),
    "HOST_GUARD_POLICY": _policy,
    "HOST_GUARD_PRIORITIES": _priorities,
    "HOST_GUARD_INTERVAL": lambda: envfloat("SMARTCRON_HOST_GUARD_INTERVAL", 1.0, minimum=0.05),
    "HOST_GUARD_SETTLE_SECONDS": lambda: envfloat("SMARTCRON_HOST_GUARD_SETTLE_SECONDS", 5.0, minimum=0.0),
    "HOST_GUARD_RESUME_MARGIN_MB": lambda: envint("SMARTCRON_HOST_GUARD_RESUME_MARGIN_MB", 256, minimum=0),
    # How often a slot worker looks for processes of runs that can no longer be
    # reported (their worker died, or the run was closed by the reconciler).
    "ORPHAN_SCAN_SECONDS": lambda: envfloat("SMARTCRON_ORPHAN_SCAN_SECONDS", 1.0, minimum=0.1),
}

_cache: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in _DEFAULTS:
        raise AttributeError(f"slots.conf has no setting {name!r}")
    if hasattr(settings, name):
        return getattr(settings, name)
    if name not in _cache:
        _cache[name] = _DEFAULTS[name]()
    return _cache[name]


def check() -> None:
    """Read every setting once so that a malformed value stops start-up with its name."""
    for name in _DEFAULTS:
        __getattr__(name)
