"""Finding and signalling the processes of a run on this host.

Every script is started with ``SMARTCRON_RUN_TAG=<install>:<run id>:<worker pid>:<worker
start>`` in its environment.  Children inherit it, also those that left the process
group with ``setsid``, so the tag finds the whole tree of a run even after the worker
that started it died.  ``<install>`` is derived from the database and Redis the
process uses, so two installations (or two test sessions) on one host never touch
each other's processes.

Uses: the reconciler kills what is left of a run before marking it LOST (so a retry
never runs next to its lost predecessor), slot workers reap orphans whose worker died,
and the host guard pauses (SIGSTOP) / resumes (SIGCONT) a run's whole tree.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import signal

import psutil
from django.conf import settings
from django.db import connections

log = logging.getLogger(__name__)

TAG_VAR = "SMARTCRON_RUN_TAG"
_TAG_BYTES = TAG_VAR.encode() + b"="


def install_id() -> str:
    """A short id of the installation: the database and Redis this process talks to."""
    db = connections["default"].settings_dict
    ident = f"{db.get('ENGINE')}|{db.get('HOST')}|{db.get('PORT')}|{db.get('NAME')}|{settings.REDIS_URL}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


@functools.cache
def _self_start() -> int:
    return _start_ticks(os.getpid())


def _start_ticks(pid: int) -> int:
    """Process start time in 1/100 s (pid reuse check)."""
    return int(psutil.Process(pid).create_time() * 100)


def run_tag(run_id: int) -> str:
    """The tag the worker puts into the environment of ``run_id``'s script."""
    return f"{install_id()}:{run_id}:{os.getpid()}:{_self_start()}"


@dataclasses.dataclass
class Tagged:
    pid: int
    run_id: int
    worker_pid: int
    worker_start: int


def tagged_processes(install: str | None = None) -> list[Tagged]:
    """Live processes on this host that belong to runs of this installation."""
    install = install or install_id()
    prefix = _TAG_BYTES + install.encode() + b":"
    me = os.getpid()
    out: list[Tagged] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        pos = data.find(prefix)
        # Only a whole variable counts (it starts the block or follows a NUL).
        if pos < 0 or (pos > 0 and data[pos - 1] != 0):
            continue
        value = data[pos + len(_TAG_BYTES):].split(b"\0", 1)[0].decode(errors="replace")
        parts = value.split(":")
        if len(parts) != 4:
            continue
        try:
            out.append(Tagged(int(entry), int(parts[1]), int(parts[2]), int(parts[3])))
        except ValueError:
            continue
    return [t for t in out if _alive(t.pid)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def worker_alive(pid: int, start: int) -> bool:
    """Is the worker process that started a run still there (and not a reused pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(int(proc.create_time() * 100) - start) <= 1
    except psutil.Error:
        return False


def signal_run(run_id: int, sig: int, procs: list[Tagged] | None = None) -> int:
    """Send ``sig`` to every local process of ``run_id`` (and its process group); return how many."""
    targets = [t for t in (procs if procs is not None else tagged_processes()) if t.run_id == run_id]
    for t in targets:
        try:
            if os.getpgid(t.pid) == t.pid:
                os.killpg(t.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(t.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(targets)


def kill_run_processes(run_id: int) -> int:
    """SIGKILL whatever is left of ``run_id`` on this host; return how many processes were hit."""
    n = signal_run(run_id, signal.SIGKILL)
    if n:
        log.warning("killed %d leftover process(es) of run %s", n, run_id)
    return n


def reap_orphans() -> list[int]:
    """Kill processes of runs that nobody will ever report: their worker died, or the run is closed.

    Returns the run ids whose processes were killed.  A run whose worker is alive and
    which is still live in the database is left alone (it may merely be paused).
    """
    from jobs.models import FINAL_STATES, JobRun

    procs = tagged_processes()
    if not procs:
        return []
    doomed: set[int] = {t.run_id for t in procs if not worker_alive(t.worker_pid, t.worker_start)}
    rest = {t.run_id for t in procs} - doomed
    if rest:
        doomed |= set(JobRun.objects.filter(pk__in=rest, state__in=FINAL_STATES).values_list("pk", flat=True))
    for run_id in sorted(doomed):
        n = signal_run(run_id, signal.SIGKILL, procs)
        log.warning("reaped %d orphaned process(es) of run %s", n, run_id)
    return sorted(doomed)
