"""Scripts run only from below the configured roots (SMARTCRON_SCRIPT_ROOTS)."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


class PathNotAllowed(ValueError):
    """The path is outside the allowed roots or otherwise unsafe; the message says why."""


def allowed_roots() -> list[Path]:
    return [Path(r).resolve() for r in settings.SCRIPT_ROOTS]


def check_script_path(path: str, *, must_exist: bool = True) -> Path:
    """Resolve ``path`` (following symlinks) and check it lies below an allowed root.

    Returns the resolved path; raises PathNotAllowed with the reason otherwise.
    """
    if not path or not os.path.isabs(path):
        raise PathNotAllowed(f"{path!r} is not an absolute path")
    if any(ord(c) < 32 for c in path):
        raise PathNotAllowed("the path contains control characters")
    try:
        resolved = Path(path).resolve()
        exists, is_file = resolved.exists(), resolved.is_file()
    except (OSError, ValueError) as exc:
        raise PathNotAllowed(f"the path cannot be checked: {exc.strerror or exc}") from None
    roots = allowed_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        shown = ", ".join(str(r) for r in roots) or "(none configured)"
        raise PathNotAllowed(f"{resolved} is outside the allowed script roots ({shown}); see SMARTCRON_SCRIPT_ROOTS")
    if must_exist:
        if not exists:
            raise PathNotAllowed(f"{resolved} does not exist")
        if not is_file:
            raise PathNotAllowed(f"{resolved} is not a regular file")
    return resolved
