"""Prometheus exposition at /metrics (custom collector over the database aggregates).

Nothing is kept in process memory: every scrape reads the all-time counters (JobStats), the
live runs and the open alerts, so any web process answers the same and restarts lose
nothing.  A handful of queries per scrape, whatever the history size.

Access: with SMARTCRON_METRICS_TOKEN set, ``Authorization: Bearer <token>`` is required.
Without it, only loopback clients are served, and never a request that came through a
proxy (X-Forwarded-For / Forwarded / X-Real-IP present), since behind a local reverse proxy
every client would look like 127.0.0.1.

Label ``job_name`` (not ``job``, which Prometheus reserves for the scrape job).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from jobs.conf import conf
from jobs.models import (
    ACTIVE_STATES,
    COUNTED_STATES,
    DURATION_BIN_FIELDS,
    DURATION_EDGES,
    LIVE_STATES,
    MEMORY_BIN_FIELDS,
    MEMORY_EDGES,
    Alert,
    Job,
    JobRun,
    JobStats,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# prometheus_client is imported by the functions that use it, on the first scrape: this
# module is part of the URLconf, which every process that runs Django's checks loads.

MB = 1024 * 1024
HEALTH_VALUE = {"healthy": 0, "warning": 1, "critical": 2}
# Per-job histograms use every 4th edge (x4 per bucket: 11 duration, 9 memory buckets) to keep
# the series count sane with a thousand jobs; per-slot ones every 2nd edge (x2).
JOB_STEP, SLOT_STEP = 4, 2


def _buckets(counts: Sequence[int], edges: Sequence[float], step: int, scale: float = 1.0) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from our bins (bin i = values below edges[i])."""
    out = []
    cum = 0
    for i, c in enumerate(counts[:len(edges)]):
        cum += c
        if i % step == 0:
            out.append((_fmt(edges[i] * scale), float(cum)))
    out.append(("+Inf", float(sum(counts))))
    return out


def _fmt(value: float) -> str:
    return f"{value:.6g}"


class SmartCronCollector:
    """Collector yielding per-job and per-slot series from the database."""

    def collect(self) -> Iterator[Metric]:
        jobs = list(Job.objects.values(
            "pk", "name", "slot__name", "enabled", "status", "health", "consecutive_failures", "circuit_opened_at",
            "baseline_duration_p50", "baseline_duration_p95", "baseline_memory_p50", "baseline_memory_p95",
            "last_success_at"))
        names = {j["pk"]: (j["name"], j["slot__name"] or "") for j in jobs}
        stat_fields = ("job_id", *(f"n_{s}" for s in COUNTED_STATES), "duration_sum", "memory_sum",
                       *DURATION_BIN_FIELDS, *MEMORY_BIN_FIELDS)
        stats = [s for s in JobStats.objects.values(*stat_fields) if s["job_id"] in names]
        yield from self._runs(stats, names)
        yield from self._histograms(stats, names)
        yield from self._live(names)
        yield from self._alerts()
        yield from self._job_gauges(jobs)

    def _runs(self, stats: list[dict[str, Any]], names: dict[int, tuple[str, str]]) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        per_job = CounterMetricFamily("smartcron_job_runs", "Runs that reached a final state, by state.",
                                      labels=["job_name", "slot", "state"])
        per_slot = CounterMetricFamily("smartcron_slot_runs", "Runs that reached a final state per slot.",
                                       labels=["slot", "state"])
        slot_sums: dict[tuple[str, str], int] = defaultdict(int)
        for s in stats:
            name, slot = names[s["job_id"]]
            for state in COUNTED_STATES:
                n = s[f"n_{state}"]
                per_job.add_metric([name, slot, state], n)
                slot_sums[(slot, state)] += n
        for (slot, state), n in sorted(slot_sums.items()):
            per_slot.add_metric([slot, state], n)
        yield per_job
        yield per_slot

    def _histograms(self, stats: list[dict[str, Any]], names: dict[int, tuple[str, str]]) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        job_d = HistogramMetricFamily("smartcron_job_duration_seconds", "Run duration.", labels=["job_name", "slot"])
        job_m = HistogramMetricFamily("smartcron_job_peak_memory_bytes", "Peak RSS of the run's process tree.",
                                      labels=["job_name", "slot"])
        slot_d = HistogramMetricFamily("smartcron_slot_duration_seconds", "Run duration per slot.", labels=["slot"])
        slot_m = HistogramMetricFamily("smartcron_slot_peak_memory_bytes", "Peak RSS per slot.", labels=["slot"])
        agg: dict[str, dict[str, Any]] = {}
        per_job = conf.METRICS_JOB_HISTOGRAMS
        for s in stats:
            name, slot = names[s["job_id"]]
            d = [s[f] for f in DURATION_BIN_FIELDS]
            m = [s[f] for f in MEMORY_BIN_FIELDS]
            if per_job:
                job_d.add_metric([name, slot], _buckets(d, DURATION_EDGES, JOB_STEP), s["duration_sum"])
                job_m.add_metric([name, slot], _buckets(m, MEMORY_EDGES, JOB_STEP, MB), s["memory_sum"] * MB)
            a = agg.setdefault(slot, {"d": [0] * len(d), "m": [0] * len(m), "ds": 0.0, "ms": 0.0})
            a["d"] = [x + y for x, y in zip(a["d"], d, strict=True)]
            a["m"] = [x + y for x, y in zip(a["m"], m, strict=True)]
            a["ds"] += s["duration_sum"]
            a["ms"] += s["memory_sum"]
        for slot, a in sorted(agg.items()):
            slot_d.add_metric([slot], _buckets(a["d"], DURATION_EDGES, SLOT_STEP), a["ds"])
            slot_m.add_metric([slot], _buckets(a["m"], MEMORY_EDGES, SLOT_STEP, MB), a["ms"] * MB)
        yield from ((job_d, job_m, slot_d, slot_m) if per_job else (slot_d, slot_m))

    def _live(self, names: dict[int, tuple[str, str]]) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from slots.models import ExecutionSlot

        running = GaugeMetricFamily("smartcron_slot_running_runs", "Runs admitted or running now.", labels=["slot"])
        waiting = GaugeMetricFamily("smartcron_slot_waiting_runs", "Runs pending or queued for admission.",
                                    labels=["slot"])
        capacity = GaugeMetricFamily("smartcron_slot_max_concurrent", "Configured concurrency limit.",
                                     labels=["slot"])
        job_running = GaugeMetricFamily("smartcron_job_running_runs", "Runs of the job admitted or running now.",
                                        labels=["job_name", "slot"])
        slots = dict(ExecutionSlot.objects.values_list("name", "max_concurrent"))
        counts: dict[tuple[str, bool], int] = defaultdict(int)
        per_job: dict[int, int] = defaultdict(int)
        rows = (JobRun.objects.filter(state__in=ACTIVE_STATES).order_by()
                .values("job_id", "slot_name", "state").annotate(n=Count("pk")))
        for row in rows:
            live = row["state"] in LIVE_STATES
            counts[(row["slot_name"], live)] += row["n"]
            if live:
                per_job[row["job_id"]] += row["n"]
        for slot in sorted(set(slots) | {s for s, _ in counts}):
            running.add_metric([slot], counts.get((slot, True), 0))
            waiting.add_metric([slot], counts.get((slot, False), 0))
            if slot in slots:
                capacity.add_metric([slot], slots[slot])
        for job_id, (name, slot) in names.items():
            job_running.add_metric([name, slot], per_job.get(job_id, 0))
        yield from (running, waiting, capacity, job_running)

    def _alerts(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("smartcron_open_alerts", "Open alerts.",
                                   labels=["type", "severity", "acknowledged"])
        rows = (Alert.objects.filter(resolved_at__isnull=True).order_by()
                .values("type", "severity").annotate(n=Count("pk"), acked=Count("acknowledged_at")))
        for row in rows:
            if row["n"] - row["acked"]:
                family.add_metric([row["type"], row["severity"], "false"], row["n"] - row["acked"])
            if row["acked"]:
                family.add_metric([row["type"], row["severity"], "true"], row["acked"])
        yield family

    def _job_gauges(self, jobs: list[dict[str, Any]]) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["job_name", "slot"]
        failures = GaugeMetricFamily("smartcron_job_consecutive_failures", "Failures in a row.", labels=labels)
        health = GaugeMetricFamily("smartcron_job_health", "0 healthy, 1 warning, 2 critical, -1 unknown.",
                                   labels=labels)
        breaker = GaugeMetricFamily("smartcron_job_circuit_open", "1 when the circuit breaker paused the job.",
                                    labels=labels)
        enabled = GaugeMetricFamily("smartcron_job_schedulable", "1 when the job is enabled and active.",
                                    labels=labels)
        base_d = GaugeMetricFamily("smartcron_job_baseline_duration_seconds", "Learned duration.",
                                   labels=[*labels, "quantile"])
        base_m = GaugeMetricFamily("smartcron_job_baseline_peak_memory_bytes", "Learned peak memory.",
                                   labels=[*labels, "quantile"])
        last_ok = GaugeMetricFamily("smartcron_job_last_success_timestamp_seconds", "Unix time of the last success.",
                                    labels=labels)
        for j in jobs:
            lv = [j["name"], j["slot__name"] or ""]
            failures.add_metric(lv, j["consecutive_failures"])
            health.add_metric(lv, HEALTH_VALUE.get(j["health"], -1))
            breaker.add_metric(lv, 1 if j["circuit_opened_at"] else 0)
            enabled.add_metric(lv, 1 if j["enabled"] and j["status"] in Job.RUNNABLE_STATUSES else 0)
            for q, key in (("0.5", "p50"), ("0.95", "p95")):
                if j[f"baseline_duration_{key}"] is not None:
                    base_d.add_metric([*lv, q], j[f"baseline_duration_{key}"])
                if j[f"baseline_memory_{key}"] is not None:
                    base_m.add_metric([*lv, q], j[f"baseline_memory_{key}"] * MB)
            if j["last_success_at"]:
                last_ok.add_metric(lv, j["last_success_at"].timestamp())
        yield from (failures, health, breaker, enabled, base_d, base_m, last_ok)


PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def authorized(request: HttpRequest) -> tuple[bool, int]:
    """(allowed, HTTP status to answer otherwise)."""
    token = conf.METRICS_TOKEN
    if token:
        scheme, _, value = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
        return ok, 401
    direct = not any(h in request.META for h in PROXY_HEADERS)
    return direct and _is_loopback(request.META.get("REMOTE_ADDR", "")), 403


def render() -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SmartCronCollector())
    return generate_latest(registry)


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    ok, status = authorized(request)
    if not ok:
        response = HttpResponse("forbidden: set SMARTCRON_METRICS_TOKEN and send it as a bearer token\n",
                                status=status, content_type="text/plain")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="smartcron-metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST

    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)


# ``path("metrics", include("jobs.prom"))`` in the project urls.
urlpatterns = [path("", metrics_view, name="metrics")]
