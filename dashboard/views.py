"""The operator dashboard: server-rendered pages for staff, actions as POST forms (CSRF)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError as FilterError

from api import conf
from api.filters import filter_jobs
from api.serializers import describe_schedule
from api.status import health_summary, performance_trends, runs_in_states, slot_overview
from dashboard import charts
from jobs import alerts, beat_sync, services
from jobs.models import FINAL_STATES, LIVE_STATES, Alert, Job, JobRun, Priority, RunState
from slots.models import ExecutionSlot

log = logging.getLogger(__name__)

# Everything the pages need is served by this app: no inline script, no third-party origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
MAX_FILTER_ERRORS = 5


def dashboard_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff only (else the admin login), with a Content-Security-Policy on the answer."""

    @staff_member_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", CSP)
        return response

    return wrapper


def _require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied(f"you need the permission {perm}")


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Redirect to the form's ``next`` when it is a local URL, else to ``fallback``."""
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = fallback
    return HttpResponseRedirect(target)


def _base_context(request: HttpRequest, section: str) -> dict[str, Any]:
    return {"section": section, "flower_url": settings.FLOWER_URL,
            "docs_url": reverse("api:docs") if "drf_spectacular_sidecar" in settings.INSTALLED_APPS
            else reverse("api:root")}


def _record_job(record: dict[str, Any]) -> tuple[int | None, str | None]:
    """(job id, job name) of a jobs.health record, whatever its key names."""
    job = record.get("job")
    job_id = record.get("job_id", job if isinstance(job, int) else record.get("id"))
    name = record.get("job_name", record.get("name", job if isinstance(job, str) else None))
    return (job_id if isinstance(job_id, int) else None), (name if isinstance(name, str) else None)


# What is worth a glance in jobs.health records (other keys are shown only if none of these exist).
HEALTH_KEYS = ("execution_status", "consecutive_failures", "failures_24h", "runs_24h", "failure_rate_24h",
               "open_alerts", "worst_alert_severity", "circuit_open", "overdue")
TREND_KEYS = ("status", "reasons", "percent_slower", "memory_change_pct", "recent_runs", "recent_duration_p50",
              "reference_duration_p50", "recent_memory_p50", "duration_cv")
_IDENTITY = {"job", "job_id", "id", "name", "job_name"}


def _record_items(record: dict[str, Any], preferred: tuple[str, ...]) -> list[tuple[str, str]]:
    """Printable (key, value) pairs of a free-form record; empty and false values are left out."""
    keys = [k for k in preferred if k in record] or [k for k in record if k not in _IDENTITY]
    items = []
    for key in keys:
        value = record[key]
        if value is None or value is False or value == [] or value == "":
            continue
        if isinstance(value, float):
            text = f"{value:,.2f}"
        elif isinstance(value, list | tuple):
            text = "; ".join(str(v) for v in value[:8])
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in list(value.items())[:8])
        else:
            text = str(value)
        items.append((str(key).replace("_", " "), text[:300]))
    return items


# --- pages ----------------------------------------------------------------------------------------
@dashboard_view
def home(request: HttpRequest) -> HttpResponse:
    """Health overview, slot gauges, running jobs, open alerts."""
    counts = dict(Job.objects.order_by().values("health").annotate(n=Count("id")).values_list("health", "n"))
    behind = {}
    for health in (Job.Health.CRITICAL, Job.Health.WARNING):
        behind[health] = list(Job.objects.filter(health=health).select_related("slot").order_by("name")[:12])
    details: dict[Any, list[tuple[str, str]]] = {}
    flagged = [j for jobs in behind.values() for j in jobs]
    if flagged:
        for record in health_summary(jobs_qs=Job.objects.filter(pk__in=[j.pk for j in flagged])):
            if isinstance(record, dict):
                job_id, name = _record_job(record)
                details[job_id or name] = _record_items(record, HEALTH_KEYS)
    for job in flagged:
        job.health_details = details.get(job.pk) or details.get(job.name) or []
    slots = slot_overview()
    for slot in slots:
        slot.run_gauge = charts.gauge(slot.running, slot.max_concurrent, "running", "runs", f"g{slot.name}r")
        slot.mem_gauge = charts.gauge(slot.memory_in_use_mb, slot.memory_budget_mb, "memory", "MB",
                                      f"g{slot.name}m")
    running = list(runs_in_states(LIVE_STATES).select_related("job").order_by("started_at", "admitted_at")[:50])
    now = timezone.now()
    for run in running:
        began = run.started_at or run.admitted_at
        run.elapsed_s = (now - began).total_seconds() if began else None
    open_alerts = Alert.objects.filter(resolved_at__isnull=True)
    context = {
        **_base_context(request, "home"),
        "counts": [(h, counts.get(h, 0)) for h in (Job.Health.CRITICAL, Job.Health.WARNING, Job.Health.HEALTHY,
                                                   Job.Health.UNKNOWN)],
        "total_jobs": sum(counts.values()),
        "behind": [(h, behind[h], counts.get(h, 0)) for h in behind],
        "slots": slots,
        "running": running,
        "running_more": len(running) == 50,
        "alerts": list(open_alerts.select_related("job", "acknowledged_by").order_by("-last_seen", "-id")[:20]),
        "alerts_open": open_alerts.count(),
        "now": now,
    }
    return render(request, "dashboard/home.html", context)


@dashboard_view
def job_list(request: HttpRequest) -> HttpResponse:
    """All jobs, filtered and paginated (the API's filters)."""
    errors: list[str] = []
    qs = Job.objects.select_related("slot").prefetch_related("tags").order_by("name")
    try:
        qs = filter_jobs(qs, request.GET)
    except FilterError as exc:
        errors = [f"{field}: {' '.join(str(m) for m in msgs)}" for field, msgs in exc.detail.items()]
        qs = qs.none()
    page = Paginator(qs, int(conf.get("DASHBOARD_PAGE_SIZE"))).get_page(request.GET.get("page"))
    for job in page.object_list:
        job.schedule_text = describe_schedule(job)
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        **_base_context(request, "jobs"),
        "page": page, "errors": errors[:MAX_FILTER_ERRORS], "query": query.urlencode(),
        "filters": {k: request.GET.get(k, "") for k in ("search", "status", "slot", "health", "priority", "tag",
                                                         "enabled")},
        "choices": {"status": Job.Status.values, "health": Job.Health.values, "priority": Priority.values,
                    "slot": list(ExecutionSlot.objects.order_by("name").values_list("name", flat=True))},
    }
    return render(request, "dashboard/jobs.html", context)


@dashboard_view
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One job: facts, duration and memory against its baseline, runs, alerts, actions."""
    job = get_object_or_404(Job.objects.select_related("slot").prefetch_related("tags"), pk=pk)
    recent = list(JobRun.objects.filter(job=job, state__in=FINAL_STATES)
                  .only("id", "scheduled_for", "state", "duration_s", "peak_memory_mb")
                  .order_by("-scheduled_for")[:60])[::-1]

    def points(attr: str) -> list[charts.Point]:
        return [charts.Point(getattr(r, attr), r.state == RunState.SUCCEEDED,
                             f"run {r.pk} {r.scheduled_for:%Y-%m-%d %H:%M:%S} {r.state}") for r in recent]

    def band(low: float | None, high: float | None) -> tuple[float, float] | None:
        return (low, high) if low is not None and high is not None and job.baseline_runs else None

    duration_chart = charts.run_chart(points("duration_s"), title="Duration", unit="s", uid="cd",
                                      band=band(job.baseline_duration_p50, job.baseline_duration_p95),
                                      median=job.baseline_duration_p50)
    memory_chart = charts.run_chart(points("peak_memory_mb"), title="Peak memory", unit="MB", uid="cm",
                                    band=band(job.baseline_memory_p50, job.baseline_memory_p95),
                                    median=job.baseline_memory_p50)
    runs = Paginator(JobRun.objects.filter(job=job).defer("output_tail").order_by("-scheduled_for"), 25)
    runs_page = runs.get_page(request.GET.get("page"))
    trends = [_record_items(r, TREND_KEYS)
              for r in performance_trends(jobs_qs=Job.objects.filter(pk=job.pk)) if isinstance(r, dict)]
    context = {
        **_base_context(request, "jobs"),
        "job": job, "schedule_text": describe_schedule(job),
        "next_runs": job.next_runs(5) if job.schedulable else [],
        "duration_chart": duration_chart, "memory_chart": memory_chart,
        "runs_page": runs_page,
        "live_runs": [r for r in runs_page.object_list if r.state in (RunState.ADMITTED, RunState.RUNNING)],
        "alerts": list(job.alerts.filter(resolved_at__isnull=True).select_related("acknowledged_by")
                       .order_by("-last_seen")[:10]),
        "dependencies": list(job.dependencies.select_related("depends_on")),
        "trends": trends,
        "run_token": secrets.token_hex(16),
    }
    return render(request, "dashboard/job_detail.html", context)


@dashboard_view
def alert_list(request: HttpRequest) -> HttpResponse:
    """Alerts: open ones by default; ``?show=all`` or ``?show=unacknowledged``."""
    show = request.GET.get("show", "open")
    qs = Alert.objects.select_related("job", "acknowledged_by").order_by("-last_seen", "-id")
    if show == "unacknowledged":
        qs = qs.filter(resolved_at__isnull=True, acknowledged_at__isnull=True)
    elif show != "all":
        show = "open"
        qs = qs.filter(resolved_at__isnull=True)
    page = Paginator(qs, int(conf.get("DASHBOARD_PAGE_SIZE"))).get_page(request.GET.get("page"))
    return render(request, "dashboard/alerts.html", {**_base_context(request, "alerts"), "page": page,
                                                     "show": show})


@dashboard_view
def timeline(request: HttpRequest) -> HttpResponse:
    """Today's schedule (UTC) per job, with the planned load per slot as a heatmap."""
    from dashboard import timeline as tl  # numpy and the planner load with the first timeline page only

    now = timezone.now()
    day = now.date()
    slot_name = request.GET.get("slot", "")
    slots = list(ExecutionSlot.objects.order_by("name"))
    shown_slots = [s for s in slots if s.name == slot_name] or slots
    jobs = Job.objects.schedulable().select_related("slot").order_by("slot__name", "name")
    if slot_name:
        jobs = jobs.filter(slot__name=slot_name)
    page = Paginator(jobs, int(conf.get("DASHBOARD_PAGE_SIZE"))).get_page(request.GET.get("page"))
    rows = tl.job_rows(list(page.object_list), day)
    loads = tl.slot_loads(day, slots)
    loads = [load for load in loads if load.name in {s.name for s in shown_slots}]
    now_s = int((now - dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)).total_seconds())
    context = {
        **_base_context(request, "timeline"),
        "svg": charts.timeline(rows, loads, now_s), "legend": charts.legend(), "loads": loads, "rows": rows,
        "page": page, "day": day, "slots": slots, "slot_name": slot_name,
        "query": f"slot={slot_name}&" if slot_name else "",
    }
    return render(request, "dashboard/timeline.html", context)


# --- actions (POST + CSRF) -------------------------------------------------------------------------------
@require_POST
@dashboard_view
def job_run_now(request: HttpRequest, pk: int) -> HttpResponse:
    _require(request, "jobs.change_job")
    job = get_object_or_404(Job.objects.select_related("slot"), pk=pk)
    token = request.POST.get("token", "")
    # The form carries a one-off token: a double click or a resubmitted form starts one run.
    key = f"ui:u{request.user.pk}:j{job.pk}:{token}" if _TOKEN.match(token) else None
    run, created = services.run_now(job, idempotency_key=key)
    if created:
        messages.success(request, f"Run {run.pk} of {job.name} queued: it starts as soon as slot "
                                  f"{job.slot.name} admits it.")
    else:
        messages.info(request, f"Already started: run {run.pk} of {job.name} (state {run.state}).")
    return _back(request, reverse("dashboard:job", args=[job.pk]))


@require_POST
@dashboard_view
def job_set_enabled(request: HttpRequest, pk: int) -> HttpResponse:
    _require(request, "jobs.change_job")
    job = get_object_or_404(Job, pk=pk)
    enabled = request.POST.get("enabled") == "1"
    beat_sync.set_enabled(Job.objects.filter(pk=job.pk), enabled)
    messages.success(request, f"{job.name} {'enabled' if enabled else 'disabled'}.")
    return _back(request, reverse("dashboard:job", args=[job.pk]))


@require_POST
@dashboard_view
def job_kill(request: HttpRequest, pk: int) -> HttpResponse:
    _require(request, "jobs.change_job")
    job = get_object_or_404(Job, pk=pk)
    n = services.kill_job(job)
    messages.success(request, f"{n} run(s) of {job.name} stopped or cancelled.")
    return _back(request, reverse("dashboard:job", args=[job.pk]))


@require_POST
@dashboard_view
def run_kill(request: HttpRequest, pk: int) -> HttpResponse:
    _require(request, "jobs.change_jobrun")
    run = get_object_or_404(JobRun.objects.select_related("job"), pk=pk)
    if run.is_final:
        messages.warning(request, f"Run {run.pk} already finished ({run.state}).")
    elif services.kill_run(run):
        messages.success(request, f"Run {run.pk} of {run.job.name}: stop requested.")
    return _back(request, reverse("dashboard:home"))


@require_POST
@dashboard_view
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    _require(request, "jobs.change_alert")
    alert = get_object_or_404(Alert, pk=pk)
    note = request.POST.get("note", "").strip()[:2000]
    if alerts.acknowledge(alert, request.user, note):
        messages.success(request, f"Alert {alert.pk} acknowledged.")
    else:
        messages.info(request, f"Alert {alert.pk} was already acknowledged.")
    return _back(request, reverse("dashboard:alerts"))

