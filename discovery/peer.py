"""Peer schedules: what this server publishes, and fetching a peer's, safely.

``schedule_payload()`` is served at ``GET /api/v1/schedule`` (any valid API key): this
server's schedulable jobs with their schedules, start seconds, expected durations and
memory, and the per-minute load over 24 h.

``fetch_peer_schedule(url, key)`` reads a peer's payload and trusts nothing in it:
- only http(s) URLs; the host must resolve to public addresses only, unless private
  addresses are explicitly allowed (SMARTCRON_PEER_ALLOW_PRIVATE) — this keeps a
  mistyped or malicious peer URL from probing the local network (loopback, RFC 1918,
  link-local, metadata services);
- no redirects, connect/read timeouts, a size limit enforced while streaming;
- the JSON is validated field by field; an error names the path (``jobs[3].cron``).
A good answer is cached as JSON (atomic write); a bad one leaves the last good cache.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone

from jobs import schedule as sched

SCHEMA_VERSION = 1
MAX_PEER_JOBS = 20000


class PeerError(Exception):
    """The peer could not be used; the message says why (and which field)."""


@dataclass
class PeerSchedule:
    server: str
    generated_at: str
    jobs: list[dict[str, Any]]
    load_per_minute: list[dict[str, Any]]
    fetched_at: str = ""
    url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "server": self.server, "generated_at": self.generated_at,
                "fetched_at": self.fetched_at, "url": self.url, "jobs": self.jobs,
                "load_per_minute": self.load_per_minute}


# --- what we publish ----------------------------------------------------------------------
def per_minute(profile) -> list[dict[str, Any]]:
    """Maximum concurrent runs and memory per minute of the day (1440 entries)."""
    jobs = profile.jobs.reshape(1440, 60).max(axis=1)
    memory = profile.memory.reshape(1440, 60).max(axis=1)
    return [{"minute": f"{m // 60:02d}:{m % 60:02d}", "jobs": int(jobs[m]), "memory_mb": round(float(memory[m]), 1)}
            for m in range(1440)]


def schedule_payload() -> dict[str, Any]:
    from slots import planner
    from slots.workload import database_workload

    plan_jobs, rows = database_workload()
    jobs = []
    for pj, job in zip(plan_jobs, rows, strict=True):
        entry = {"name": pj.name, "wait_seconds": pj.wait_seconds, "duration_s": round(pj.duration_s, 3),
                 "memory_mb": round(pj.memory_mb, 3), "slot": pj.slot, "timezone": pj.tz, "pinned": pj.pinned,
                 "priority": job.priority}
        if pj.cron is not None:
            entry["cron"] = pj.cron
        else:
            entry["interval_s"] = pj.interval_s
        jobs.append(entry)
    profile = planner.simulate(plan_jobs) if plan_jobs else None
    load = per_minute(profile) if profile is not None else [
        {"minute": f"{m // 60:02d}:{m % 60:02d}", "jobs": 0, "memory_mb": 0.0} for m in range(1440)]
    return {"schema_version": SCHEMA_VERSION, "server": socket.gethostname(),
            "generated_at": timezone.now().isoformat(), "total_active_jobs": len(jobs), "jobs": jobs,
            "load_per_minute": load}


# --- validation ---------------------------------------------------------------------------
def _num(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PeerError(f"{where}: expected a number, got {type(value).__name__}")
    if not lo <= float(value) <= hi:
        raise PeerError(f"{where}: {value} is outside [{lo:g}, {hi:g}]")
    return float(value)


def validate_payload(data: Any) -> PeerSchedule:
    if not isinstance(data, dict):
        raise PeerError(f"top level: expected a JSON object, got {type(data).__name__}")
    jobs_raw = data.get("jobs")
    if not isinstance(jobs_raw, list):
        raise PeerError("jobs: missing or not a list")
    if len(jobs_raw) > MAX_PEER_JOBS:
        raise PeerError(f"jobs: {len(jobs_raw)} entries is more than the limit of {MAX_PEER_JOBS}")
    jobs = []
    for i, raw in enumerate(jobs_raw):
        where = f"jobs[{i}]"
        if not isinstance(raw, dict):
            raise PeerError(f"{where}: expected an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise PeerError(f"{where}.name: expected a non-empty printable string of at most 200 characters")
        entry: dict[str, Any] = {"name": name}
        has_cron, has_interval = raw.get("cron") is not None, raw.get("interval_s") is not None
        if has_cron == has_interval:
            raise PeerError(f"{where}: give exactly one of cron and interval_s")
        if has_cron:
            if not isinstance(raw["cron"], str):
                raise PeerError(f"{where}.cron: expected a string")
            try:
                entry["cron"] = sched.normalize_cron(raw["cron"])
            except sched.ScheduleError as exc:
                raise PeerError(f"{where}.cron: {exc}") from None
        else:
            value = _num(raw["interval_s"], f"{where}.interval_s", sched.MIN_INTERVAL_SECONDS,
                         sched.MAX_INTERVAL_SECONDS)
            if value != int(value):
                raise PeerError(f"{where}.interval_s: must be a whole number of seconds")
            entry["interval_s"] = int(value)
        tz = raw.get("timezone", "UTC")
        try:
            sched.validate_timezone(tz if isinstance(tz, str) else "")
        except sched.ScheduleError as exc:
            raise PeerError(f"{where}.timezone: {exc}") from None
        entry["timezone"] = tz
        entry["wait_seconds"] = int(_num(raw.get("wait_seconds", 0), f"{where}.wait_seconds", 0, 59))
        entry["duration_s"] = _num(raw.get("duration_s"), f"{where}.duration_s", 0, 86400)
        entry["memory_mb"] = _num(raw.get("memory_mb", 0), f"{where}.memory_mb", 0, 10**7)
        jobs.append(entry)
    load = data.get("load_per_minute", [])
    if not isinstance(load, list) or len(load) not in (0, 1440):
        raise PeerError("load_per_minute: expected a list of 1440 entries (or none)")
    clean_load = []
    for i, row in enumerate(load):
        if not isinstance(row, dict):
            raise PeerError(f"load_per_minute[{i}]: expected an object")
        clean_load.append({"minute": f"{i // 60:02d}:{i % 60:02d}",
                           "jobs": int(_num(row.get("jobs", 0), f"load_per_minute[{i}].jobs", 0, 10**6)),
                           "memory_mb": _num(row.get("memory_mb", 0), f"load_per_minute[{i}].memory_mb", 0, 10**9)})
    server = data.get("server", "")
    if not isinstance(server, str) or len(server) > 255:
        raise PeerError("server: expected a string of at most 255 characters")
    generated = data.get("generated_at", "")
    if not isinstance(generated, str) or len(generated) > 64:
        raise PeerError("generated_at: expected an ISO timestamp string")
    return PeerSchedule(server=server, generated_at=generated, jobs=jobs, load_per_minute=clean_load)


# --- fetching -----------------------------------------------------------------------------
def check_url(url: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise PeerError(f"url: scheme {parts.scheme or '(none)'!r} refused; only http and https are allowed")
    if not parts.hostname:
        raise PeerError("url: no host")
    if parts.username or parts.password:
        raise PeerError("url: credentials in the URL are refused; use SMARTCRON_PEER_API_KEY")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise PeerError(f"url: cannot resolve {parts.hostname!r}: {exc}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not allow_private and not addr.is_global:
            raise PeerError(f"url: {parts.hostname} resolves to {addr}, a private/loopback/link-local address; "
                            "refused unless SMARTCRON_PEER_ALLOW_PRIVATE=1")


def fetch_peer_schedule(url: str, api_key: str, *, timeout: float = 10.0, max_bytes: int = 5 * 1024 * 1024,
                        allow_private: bool = False) -> PeerSchedule:
    import requests

    check_url(url, allow_private=allow_private)
    headers = {"Accept": "application/json", "User-Agent": "smartcron-peer/1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with requests.get(url, headers=headers, timeout=(min(timeout, 5.0), timeout), stream=True,
                          allow_redirects=False) as resp:
            if 300 <= resp.status_code < 400:
                raise PeerError(f"peer answered a redirect ({resp.status_code}); redirects are not followed")
            if resp.status_code != 200:
                raise PeerError(f"peer answered HTTP {resp.status_code}")
            body = bytearray()
            for chunk in resp.iter_content(65536):
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise PeerError(f"peer answer is larger than the limit of {max_bytes} bytes")
    except requests.RequestException as exc:
        raise PeerError(f"peer unreachable: {exc.__class__.__name__}: {exc}") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerError(f"peer answer is not JSON: {exc}") from None
    result = validate_payload(data)
    result.url = url
    result.fetched_at = timezone.now().isoformat()
    return result


def cache_path() -> Path:
    return Path(getattr(settings, "PEER_CACHE_FILE", "") or Path(settings.VAR_DIR) / "peer_schedule.json")


def save_cache(schedule: PeerSchedule) -> Path:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".peer-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(schedule.as_dict(), fh)
    os.replace(tmp, path)
    return path


def load_cache() -> PeerSchedule | None:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        result = validate_payload(data)
    except PeerError:
        return None
    result.url = data.get("url", "")
    result.fetched_at = data.get("fetched_at", "")
    return result


def refresh(url: str | None = None, api_key: str | None = None) -> tuple[PeerSchedule | None, str | None]:
    """Fetch and cache; on failure keep the last good cache and raise a PEER alert.

    Returns (schedule in force, error message or None).
    """
    from jobs.alerts import raise_alert
    from jobs.models import Alert

    url = url or getattr(settings, "PEER_URL", "")
    key = api_key if api_key is not None else getattr(settings, "PEER_API_KEY", "")
    if not url:
        return load_cache(), "no peer configured (SMARTCRON_PEER_URL)"
    try:
        schedule = fetch_peer_schedule(url, key, timeout=getattr(settings, "PEER_TIMEOUT_SECONDS", 10.0),
                                       max_bytes=getattr(settings, "PEER_MAX_BYTES", 5 * 1024 * 1024),
                                       allow_private=getattr(settings, "PEER_ALLOW_PRIVATE", False))
    except PeerError as exc:
        cached = load_cache()
        kept = f"; keeping the schedule fetched at {cached.fetched_at}" if cached else "; no earlier schedule cached"
        raise_alert(None, Alert.Type.PEER, Alert.Severity.WARNING, f"peer schedule from {url} refused: {exc}{kept}")
        return cached, str(exc)
    save_cache(schedule)
    Alert.objects.filter(job__isnull=True, type=Alert.Type.PEER, resolved_at__isnull=True).update(
        resolved_at=timezone.now(), dedup_key=None)
    return schedule, None


def peer_plan_jobs(schedule: PeerSchedule):
    from slots import planner

    return [planner.PlanJob(name=j["name"], cron=j.get("cron"), interval_s=j.get("interval_s"),
                            tz=j.get("timezone", "UTC"), wait_seconds=j["wait_seconds"], duration_s=j["duration_s"],
                            memory_mb=j["memory_mb"], pinned=True, slot="peer")
            for j in schedule.jobs]


def busiest_minutes(schedule: PeerSchedule, top: int = 10) -> list[dict[str, Any]]:
    """The peer's busiest minutes with the names of the jobs that start in them."""
    starts: dict[str, list[str]] = {}
    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    for j in schedule.jobs:
        if j.get("cron"):
            fires = sched.cron_fires_between(j["cron"], j.get("timezone", "UTC"), day, day + dt.timedelta(days=1))
        else:
            fires = sched.interval_points_between(j["interval_s"], j["wait_seconds"], day, day + dt.timedelta(days=1))
        for f in fires:
            starts.setdefault(f"{f:%H:%M}", []).append(j["name"])
    rows = schedule.load_per_minute or []
    ranked = sorted(rows, key=lambda r: (-r["jobs"], -r["memory_mb"], r["minute"]))[:top]
    return [{**r, "starting": sorted(set(starts.get(r["minute"], [])))} for r in ranked if r["jobs"] > 0]
