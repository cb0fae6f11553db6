"""Extension points of the run pipeline.

Apps register callables in their ``AppConfig.ready()``:
- ``on_run_finished(run)`` after a run reached a final state (the caller won the fenced
  transition, so each callback runs once per run).  A failing callback is logged and
  never breaks the pipeline or the other callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_run_finished: list[Callable] = []


def on_run_finished(callback: Callable) -> Callable:
    if callback not in _run_finished:
        _run_finished.append(callback)
    return callback


def run_finished(run) -> None:
    for callback in list(_run_finished):
        try:
            callback(run)
        except Exception:  # noqa: BLE001 - bookkeeping must never lose a run
            log.exception("run-finished hook %s failed for run %s", getattr(callback, "__name__", callback), run.pk)
