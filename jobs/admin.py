from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from jobs import alerts, beat_sync, services
from jobs.models import Alert, Job, JobDependency, JobRun, Tag


class DependencyInline(admin.TabularInline):
    model = JobDependency
    fk_name = "job"
    extra = 0
    autocomplete_fields = ["depends_on"]
    verbose_name = "dependency"
    verbose_name_plural = "dependencies (this job waits for / never runs with)"


class TagInline(admin.TabularInline):
    model = Job.tags.through
    extra = 0
    autocomplete_fields = ["tag"]
    verbose_name = "tag"
    verbose_name_plural = "tags"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "status", "priority", "category", "schedule_display", "wait_seconds", "slot",
                    "health", "last_state", "last_run_at", "links")
    list_filter = ("enabled", "status", "priority", "category", "slot", "schedule_type", "health", "auto_discovered",
                   "tags")
    search_fields = ("name", "description", "script_path")
    list_select_related = ("slot",)
    inlines = [TagInline, DependencyInline]
    actions = ["enable_jobs", "disable_jobs", "run_now", "recalculate_baseline"]
    readonly_fields = ("baseline_runs", "baseline_duration_p50", "baseline_duration_p95", "baseline_memory_p50",
                       "baseline_memory_p95", "baseline_updated_at", "health", "consecutive_failures", "last_run_at",
                       "last_success_at", "last_state", "auto_discovered", "script_missing", "manual_fields",
                       "schedule_since", "created_at", "updated_at", "next_runs_display", "related_links")
    fieldsets = (
        (None, {"fields": ("name", "description", "category", "priority", "status", "enabled", "related_links")}),
        ("Command", {"fields": ("script_path", "interpreter", "args", "working_dir", "environment", "run_as_user")}),
        ("Schedule", {"fields": ("schedule_type", "cron_expression", "interval_seconds", "daily_at", "weekday",
                                 "wait_seconds", "timezone", "pinned", "next_runs_display")}),
        ("Resources", {"fields": ("slot", "cpu_weight", "memory_weight", "expected_duration_s", "expected_memory_mb",
                                  "timeout_seconds", "memory_limit_mb")}),
        ("Policy", {"fields": ("overlap_policy", "max_instances", "start_window_seconds", "max_retries",
                               "retry_backoff_seconds", "circuit_breaker_threshold")}),
        ("Baseline and health", {"classes": ["collapse"], "fields": (
            "baseline_runs", "baseline_duration_p50", "baseline_duration_p95", "baseline_memory_p50",
            "baseline_memory_p95", "baseline_updated_at", "health", "consecutive_failures", "last_run_at",
            "last_success_at", "last_state")}),
        ("Origin", {"classes": ["collapse"], "fields": ("auto_discovered", "script_missing", "manual_fields",
                                                         "schedule_since", "created_at", "updated_at")}),
    )

    @admin.display(description="schedule")
    def schedule_display(self, job: Job) -> str:
        if job.schedule_type == Job.ScheduleType.INTERVAL:
            return f"every {job.interval_seconds} s"
        if job.schedule_type == Job.ScheduleType.MANUAL:
            return "manual"
        return f"{job.effective_cron()} ({job.timezone})"

    @admin.display(description="next runs (UTC)")
    def next_runs_display(self, job: Job) -> str:
        if not job.pk or not job.schedulable:
            return "-"
        return ", ".join(f"{t:%Y-%m-%d %H:%M:%S}" for t in job.next_runs(3))

    @admin.display(description="")
    def links(self, job: Job) -> str:
        runs = reverse("admin:jobs_jobrun_changelist") + f"?job__id__exact={job.pk}"
        alerts_url = reverse("admin:jobs_alert_changelist") + f"?job__id__exact={job.pk}"
        return format_html('<a href="{}">runs</a> · <a href="{}">alerts</a>', runs, alerts_url)

    @admin.display(description="see also")
    def related_links(self, job: Job) -> str:
        if not job.pk:
            return "-"
        runs = reverse("admin:jobs_jobrun_changelist") + f"?job__id__exact={job.pk}"
        alerts_url = reverse("admin:jobs_alert_changelist") + f"?job__id__exact={job.pk}"
        open_alerts = job.alerts.filter(resolved_at__isnull=True).count()
        return format_html('<a href="{}">runs ({})</a> · <a href="{}">alerts ({} open)</a> · '
                           '<a href="{}">dashboard page</a>', runs, job.runs.count(), alerts_url, open_alerts,
                           reverse("dashboard:job", args=[job.pk]))

    def save_model(self, request, obj: Job, form, change) -> None:
        # Fields an operator changes here are never overwritten by discover_jobs.
        if change and obj.auto_discovered:
            obj.mark_manual(form.changed_data)
        super().save_model(request, obj, form, change)
        timing = {"schedule_type", "cron_expression", "interval_seconds", "daily_at", "weekday", "wait_seconds",
                  "timezone", "slot", "expected_duration_s", "expected_memory_mb", "enabled", "status"}
        if obj.schedulable and (not change or timing & set(form.changed_data)):
            self._collision_message(request, obj)

    def _collision_message(self, request, obj: Job) -> None:
        """Show the peak the job's start second creates, and a quieter second if there is one."""
        from slots.collision import check

        try:
            result = check(obj)
        except Exception as exc:  # noqa: BLE001 - advice only; the save itself succeeded
            self.message_user(request, f"Collision check unavailable: {exc}", messages.INFO)
            return
        if result is not None:
            level = messages.WARNING if result.improvable else messages.INFO
            self.message_user(request, result.message(obj.name), level)

    @admin.action(description="Enable selected jobs")
    def enable_jobs(self, request, queryset: QuerySet[Job]) -> None:
        n = beat_sync.set_enabled(queryset, True)
        self.message_user(request, f"{n} job(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected jobs")
    def disable_jobs(self, request, queryset: QuerySet[Job]) -> None:
        n = beat_sync.set_enabled(queryset, False)
        self.message_user(request, f"{n} job(s) disabled.", messages.SUCCESS)

    @admin.action(description="Run selected jobs now")
    def run_now(self, request, queryset: QuerySet[Job]) -> None:
        n = sum(services.run_now(job)[1] for job in queryset.select_related("slot"))
        self.message_user(request, f"{n} run(s) started.", messages.SUCCESS)

    @admin.action(description="Recalculate the baseline of selected jobs")
    def recalculate_baseline(self, request, queryset: QuerySet[Job]) -> None:
        from jobs import baselines

        results = baselines.recalculate(queryset)
        updated = sum(1 for r in results if r.get("status") == "updated")
        learning = [r.get("job") for r in results if r.get("status") != "updated"]
        text = f"{updated} baseline(s) recalculated."
        if learning:
            text += f" Not enough successful runs yet for: {', '.join(str(n) for n in learning[:10])}."
        self.message_user(request, text, messages.SUCCESS)


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "scheduled_for", "state", "trigger", "attempt", "started_at", "duration_s",
                    "peak_memory_mb", "cpu_seconds", "exit_code", "worker_host")
    list_filter = ("state", "trigger", "slot_name")
    search_fields = ("job__name", "error")
    list_select_related = ("job",)
    date_hierarchy = "scheduled_for"
    raw_id_fields = ("job", "retry_of")
    actions = ["kill_runs"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Kill / cancel selected runs")
    def kill_runs(self, request, queryset: QuerySet[JobRun]) -> None:
        n = sum(services.kill_run(run) for run in queryset)
        self.message_user(request, f"{n} run(s) stopped or cancelled.", messages.SUCCESS)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("id", "severity", "type", "job", "count", "last_seen", "resolved_at", "acknowledged_at",
                    "acknowledged_by", "short_message")
    list_filter = ("severity", "type", ("resolved_at", admin.EmptyFieldListFilter),
                   ("acknowledged_at", admin.EmptyFieldListFilter))
    search_fields = ("message", "job__name")
    list_select_related = ("job", "acknowledged_by")
    raw_id_fields = ("job", "run")
    actions = ["acknowledge_alerts"]

    @admin.display(description="message")
    def short_message(self, alert: Alert) -> str:
        return alert.message[:120]

    @admin.action(description="Acknowledge selected alerts")
    def acknowledge_alerts(self, request, queryset: QuerySet[Alert]) -> None:
        n = sum(alerts.acknowledge(a, request.user, note=f"acknowledged in admin at {timezone.now():%H:%M}")
                for a in queryset)
        self.message_user(request, f"{n} alert(s) acknowledged.", messages.SUCCESS)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "color")
    search_fields = ("name",)


@admin.register(JobDependency)
class JobDependencyAdmin(admin.ModelAdmin):
    list_display = ("job", "kind", "depends_on", "within_seconds", "trigger_on_success")
    list_filter = ("kind",)
    autocomplete_fields = ["job", "depends_on"]
