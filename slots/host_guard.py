"""Host memory guard: keep a reserve of host memory for the operator's editor and database.

Where it runs, and why: a daemon thread inside every *slot* worker process (started on
Celery's ``worker_ready`` signal, see ``slots.apps``).  Host memory is a property of the
host the scripts run on, and the slot worker is the one Smart Cron process that is
always on that host while scripts can run there; a periodic Celery task would queue
behind busy slot queues and might land on another host, and the per-run sampling loop
stops when nothing runs (and N loops would act N times).  Several slot workers on one
host each run a guard; a short Redis lock per host makes sure only one of them acts at
a time.

Every ``HOST_GUARD_INTERVAL`` seconds a guard:

1. reads psutil's *available* memory and publishes it (with the queues its worker
   serves) under ``smartcron:guard:<host>:<pid>``; admission refuses to start anything
   on a queue whose every serving host is below ``HOST_MEMORY_RESERVE_MB``;
2. below the reserve, per ``HOST_GUARD_POLICY``, pauses (SIGSTOP to the whole tree) or
   kills the most recently started running job of a low priority
   (``HOST_GUARD_PRIORITIES``) on this host, one action per ``HOST_GUARD_SETTLE_SECONDS``
   so that the effect can show before the next one;
3. once memory is back above reserve + ``HOST_GUARD_RESUME_MARGIN_MB``, resumes the
   paused jobs (SIGCONT), the last paused first, one per settle period;
4. every ``ORPHAN_SCAN_SECONDS``, kills processes of runs that nobody will report any
   more (their worker died, or the run was closed): see ``slots.procs.reap_orphans``.

A paused job keeps its lease (its memory is still in use) and its worker keeps
heartbeating; its timeout keeps counting (wall clock).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import psutil
from django.db import close_old_connections

from slots import conf, procs
from slots.redis_client import get_redis

log = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
MB = 1024 * 1024
GUARDS = "smartcron:guards"  # ZSET "<host>:<pid>" -> expiry of its report
GUARD_PREFIX = "smartcron:guard:"
HOST_KILL_PREFIX = "hostguard:"  # kill reason prefix: the run ends KILLED_MEMORY


def paused_key(host: str = HOSTNAME) -> str:
    """ZSET run id -> time it was paused, per host."""
    return f"smartcron:paused:{host}"


def available_mb() -> float:
    return psutil.virtual_memory().available / MB


def paused_runs(host: str | None = None) -> list[int]:
    """Runs paused by the guard (on ``host``, or on any host)."""
    r = get_redis()
    keys = [paused_key(host)] if host else [k.decode() for k in r.scan_iter("smartcron:paused:*", count=500)]
    out: list[int] = []
    for key in keys:
        out += [int(m) for m in r.zrange(key, 0, -1)]
    return out


def guard_reports() -> list[dict]:
    """The live reports of every guard (one per slot worker process)."""
    r = get_redis()
    now = time.time()
    r.zremrangebyscore(GUARDS, "-inf", f"({now}")
    names = [m.decode() for m in r.zrangebyscore(GUARDS, now, "+inf")]
    if not names:
        return []
    raw = r.mget([GUARD_PREFIX + n for n in names])
    return [json.loads(v) for v in raw if v]


_cache: dict[str, tuple[float, list[dict]]] = {}
_cache_lock = threading.Lock()


def _reports_cached(max_age: float = 0.25) -> list[dict]:
    # Admission asks on every attempt; a quarter second old report is fresh enough.
    with _cache_lock:
        hit = _cache.get("reports")
        if hit and time.monotonic() - hit[0] < max_age:
            return hit[1]
    reports = guard_reports()
    with _cache_lock:
        _cache["reports"] = (time.monotonic(), reports)
    return reports


def admission_block(queue: str) -> str | None:
    """Why nothing may start on ``queue`` now (host memory below reserve), or None.

    The hosts that count are those whose slot workers consume ``queue`` (from the guard
    reports).  Without any report (guard disabled, no slot worker up yet) this host is
    checked directly.
    """
    reports = [r for r in _reports_cached() if queue in r.get("queues", [])]
    if reports:
        if all(r["low"] for r in reports):
            worst = min(reports, key=lambda r: r["available_mb"])
            hosts = sorted({r["host"] for r in reports})
            return (f"host memory below reserve on {', '.join(hosts)} "
                    f"({worst['available_mb']:.0f} MB available < {worst['reserve_mb']} MB reserve)")
        return None
    return local_block()


def local_block() -> str | None:
    """Why nothing may start on *this* host now, or None."""
    reserve = conf.HOST_MEMORY_RESERVE_MB
    if not reserve:
        return None
    avail = available_mb()
    if avail < reserve:
        return f"host memory below reserve on {HOSTNAME} ({avail:.0f} MB available < {reserve} MB reserve)"
    return None


class HostGuard(threading.Thread):
    """The watcher thread of one slot worker process."""

    def __init__(self, queues: list[str], probe: Callable[[], float] = available_mb) -> None:
        super().__init__(name="smartcron-host-guard", daemon=True)
        self.queues = sorted(queues)
        self.probe = probe
        self.ident_name = f"{HOSTNAME}:{os.getpid()}"
        self._stop_event = threading.Event()
        self._last_scan = 0.0
        self._quiet_until = 0.0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        log.info("host guard started for queues %s (reserve %s MB, policy %s)", ",".join(self.queues),
                 conf.HOST_MEMORY_RESERVE_MB, conf.HOST_GUARD_POLICY)
        while not self._stop_event.is_set():
            try:
                close_old_connections()
                self.step()
            except Exception:  # noqa: BLE001 - the guard must outlive a Redis or DB hiccup
                log.exception("host guard step failed")
            self._stop_event.wait(conf.HOST_GUARD_INTERVAL)

    # --- one round -----------------------------------------------------------------------
    def step(self) -> None:
        now = time.time()
        avail = self.probe()
        reserve = conf.HOST_MEMORY_RESERVE_MB
        low = bool(reserve) and avail < reserve
        self.publish(avail, reserve, low, now)
        if time.monotonic() - self._last_scan >= conf.ORPHAN_SCAN_SECONDS:
            self._last_scan = time.monotonic()
            procs.reap_orphans()
        policy = conf.HOST_GUARD_POLICY
        if policy == "none" or not reserve:
            return
        if low:
            self.relieve(avail, reserve, policy)
        elif avail >= reserve + conf.HOST_GUARD_RESUME_MARGIN_MB:
            self.resume_one()

    def publish(self, avail: float, reserve: int, low: bool, now: float) -> None:
        ttl = max(3.0, 3 * conf.HOST_GUARD_INTERVAL)
        report = {"host": HOSTNAME, "pid": os.getpid(), "queues": self.queues, "available_mb": round(avail, 1),
                  "reserve_mb": reserve, "low": low, "at": now}
        pipe = get_redis().pipeline()
        pipe.set(GUARD_PREFIX + self.ident_name, json.dumps(report), px=int(ttl * 1000))
        pipe.zadd(GUARDS, {self.ident_name: now + ttl})
        pipe.execute()

    def _may_act(self) -> bool:
        """One action per settle period per host, whichever guard of the host takes it."""
        settle = conf.HOST_GUARD_SETTLE_SECONDS
        if settle <= 0:
            return True
        if time.monotonic() < self._quiet_until:
            return False
        ok = get_redis().set(f"smartcron:hostguard:{HOSTNAME}:act", self.ident_name, nx=True,
                             px=max(1, int(settle * 1000)))
        if ok:
            self._quiet_until = time.monotonic() + settle
        return bool(ok)

    def relieve(self, avail: float, reserve: int, policy: str) -> None:
        from jobs.models import JobRun, RunState

        paused = set(paused_runs(HOSTNAME))
        victim = (JobRun.objects.filter(state=RunState.RUNNING, worker_host=HOSTNAME,
                                        job__priority__in=conf.HOST_GUARD_PRIORITIES)
                  .exclude(pk__in=paused).order_by("-started_at", "-pk").select_related("job").first())
        if victim is None or not self._may_act():
            return
        why = f"host memory below reserve ({avail:.0f} MB available < {reserve} MB)"
        if policy == "kill":
            from slots.admission import request_kill

            request_kill(victim.pk, reason=f"{HOST_KILL_PREFIX} killed by the host memory guard: {why}")
            log.warning("host guard: killing run %s of %s: %s", victim.pk, victim.job.name, why)
            return
        if procs.signal_run(victim.pk, signal.SIGSTOP):
            get_redis().zadd(paused_key(), {str(victim.pk): time.time()})
            log.warning("host guard: paused run %s of %s: %s", victim.pk, victim.job.name, why)

    def resume_one(self) -> None:
        from jobs.models import JobRun, RunState

        r = get_redis()
        for member in r.zrevrange(paused_key(), 0, -1):
            run_id = int(member)
            if not JobRun.objects.filter(pk=run_id, state=RunState.RUNNING).exists():
                r.zrem(paused_key(), member)  # finished (killed by its timeout, or lost) while paused
                continue
            if not self._may_act():
                return
            procs.signal_run(run_id, signal.SIGCONT)
            r.zrem(paused_key(), member)
            log.warning("host guard: resumed run %s (memory back above reserve)", run_id)
            return


def forget_command(run_id: int, host: str = HOSTNAME) -> tuple[str, str, str]:
    """A run ended, it is no longer paused: the Redis command, for the pipeline that frees its
    lease (``LeaseStore.release(also=...)``)."""
    return ("zrem", paused_key(host), str(run_id))


_started: list[HostGuard] = []


def start_guard(queues: list[str]) -> HostGuard | None:
    """Start this process's guard once (called from the worker_ready signal)."""
    if _started or not conf.HOST_GUARD:
        return None
    guard = HostGuard(queues)
    guard.start()
    _started.append(guard)
    return guard
