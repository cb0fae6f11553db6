"""Serializers: strict input (unknown or read-only fields are 400s), model validation reused."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import Alert, Job, JobRun, Tag
from slots.models import ExecutionSlot

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class StrictModelSerializer(serializers.ModelSerializer):
    """Refuses fields it does not know or may not write, instead of ignoring them silently."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            errors: dict[str, list[str]] = {}
            for key in data:
                field = self.fields.get(key)
                if field is None:
                    errors[str(key)[:100]] = ["unknown field"]
                elif field.read_only:
                    errors[str(key)] = ["read-only field"]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def model_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    """Django's message_dict with ``__all__`` renamed to DRF's ``non_field_errors``."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    return {("non_field_errors" if k == NON_FIELD_ERRORS else k): v for k, v in errors.items()}


class JobSerializer(StrictModelSerializer):
    slot = serializers.SlugRelatedField(slug_field="name", queryset=ExecutionSlot.objects.all(),
                                        help_text="Name of the execution slot (default, heavy, light, ...).")
    tags = serializers.SlugRelatedField(slug_field="name", many=True, queryset=Tag.objects.all(), required=False,
                                        help_text="Tag names (they must exist).")
    environment = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=4096, trim_whitespace=False),
        write_only=True, required=False,
        help_text="Extra environment variables (replaces the whole set). Values are never returned.")
    environment_names = serializers.SerializerMethodField(help_text="Names of the job's extra environment variables.")
    schedule = serializers.SerializerMethodField(help_text="The schedule in words.")
    expected_seconds = serializers.FloatField(read_only=True, help_text="Baseline p95 duration, else the estimate.")
    expected_peak_mb = serializers.FloatField(read_only=True, help_text="Baseline p95 memory, else the estimate.")

    class Meta:
        model = Job
        fields = [
            "id", "name", "description", "category", "priority", "status", "enabled", "tags",
            "script_path", "interpreter", "args", "working_dir", "environment", "environment_names", "run_as_user",
            "schedule_type", "cron_expression", "interval_seconds", "daily_at", "weekday", "wait_seconds",
            "timezone", "schedule", "slot", "cpu_weight", "memory_weight", "timeout_seconds", "memory_limit_mb",
            "expected_duration_s", "expected_memory_mb", "max_retries", "retry_backoff_seconds",
            "start_window_seconds", "overlap_policy", "max_instances", "pinned", "circuit_breaker_threshold",
            "expected_seconds", "expected_peak_mb",
            "baseline_runs", "baseline_duration_p50", "baseline_duration_p95", "baseline_memory_p50",
            "baseline_memory_p95", "baseline_updated_at", "health", "consecutive_failures", "last_run_at",
            "last_success_at", "last_state", "auto_discovered", "script_missing", "created_at", "updated_at",
        ]
        # run_as_user is admin-only: through the API it could name root and sidestep the root guard.
        read_only_fields = [
            "id", "run_as_user", "baseline_runs", "baseline_duration_p50", "baseline_duration_p95",
            "baseline_memory_p50", "baseline_memory_p95", "baseline_updated_at", "health", "consecutive_failures",
            "last_run_at", "last_success_at", "last_state", "auto_discovered", "script_missing", "created_at",
            "updated_at",
        ]

    def get_environment_names(self, job: Job) -> list[str]:
        return sorted(job.environment or {}) if isinstance(job.environment, dict) else []

    def get_schedule(self, job: Job) -> str:
        return describe_schedule(job)

    def validate_environment(self, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _ENV_NAME.match(name)]
        if bad:
            raise serializers.ValidationError(f"invalid variable name {bad[0][:60]!r} (letters, digits, _)")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        tags = attrs.pop("tags", None)
        # Validate a copy with the model's own rules, so that clients get the same messages
        # (naming the field) as the admin and the commands.
        probe = copy.copy(self.instance) if self.instance is not None else Job()
        for key, value in attrs.items():
            setattr(probe, key, value)
        try:
            probe.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(model_errors(exc)) from None
        except OSError as exc:  # e.g. a file name too long to stat below a script root
            raise serializers.ValidationError({"script_path": [f"cannot be checked: {exc.strerror}"]}) from None
        if probe.schedule_type == Job.ScheduleType.CRON:
            attrs["cron_expression"] = probe.cron_expression  # normalised by Job.clean()
        if tags is not None:
            attrs["tags"] = tags
        return attrs

    @transaction.atomic
    def create(self, validated: dict[str, Any]) -> Job:
        tags = validated.pop("tags", None)
        job = Job.objects.create(**validated)
        if tags:
            job.tags.set(tags)
        return job

    @transaction.atomic
    def update(self, job: Job, validated: dict[str, Any]) -> Job:
        tags = validated.pop("tags", None)
        if job.auto_discovered:
            # Fields an operator sets are kept by discover_jobs from now on.
            job.mark_manual(list(validated))
        for key, value in validated.items():
            setattr(job, key, value)
        job.save()
        if tags is not None:
            job.tags.set(tags)
        return job


class JobDetailSerializer(JobSerializer):
    next_runs = serializers.SerializerMethodField(help_text="The next planned seconds (UTC).")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "next_runs"]

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_next_runs(self, job: Job) -> list[str]:
        if not job.schedulable:
            return []
        return [t.isoformat() for t in job.next_runs(5)]


def describe_schedule(job: Job) -> str:
    if job.schedule_type == Job.ScheduleType.INTERVAL:
        return f"every {job.interval_seconds} s (phase {job.wait_seconds} s)"
    if job.schedule_type == Job.ScheduleType.MANUAL:
        return "manual"
    try:
        cron = job.effective_cron()
    except ValueError:
        return f"invalid: {job.cron_expression}"
    return f"cron {cron} +{job.wait_seconds}s ({job.timezone})"


class RunSerializer(serializers.ModelSerializer):
    job_name = serializers.CharField(source="job.name", read_only=True)

    class Meta:
        model = JobRun
        fields = [
            "id", "job", "job_name", "scheduled_for", "state", "trigger", "attempt", "retry_of", "slot_name",
            "expected_memory_mb", "created_at", "queued_at", "admitted_at", "started_at", "finished_at",
            "heartbeat_at", "duration_s", "queue_wait_s", "exit_code", "peak_memory_mb", "cpu_seconds", "error",
            "worker_host", "pid",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "output_tail"]
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):
    job_name = serializers.CharField(source="job.name", read_only=True, default=None, allow_null=True)
    acknowledged_by = serializers.CharField(source="acknowledged_by.get_username", read_only=True, default=None,
                                            allow_null=True)
    is_open = serializers.BooleanField(read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "job", "job_name", "run", "type", "severity", "message", "count", "first_seen", "last_seen",
                  "resolved_at", "is_open", "acknowledged_at", "acknowledged_by", "ack_note"]
        read_only_fields = fields


class AcknowledgeSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="",
                                 help_text="Why, or what is being done about it.")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, Mapping):
            unknown = [k for k in data if k not in self.fields]
            if unknown:
                raise serializers.ValidationError({str(k)[:100]: ["unknown field"] for k in unknown})
        return super().to_internal_value(data)


class AcknowledgeResultSerializer(serializers.Serializer):
    changed = serializers.BooleanField(help_text="False when the alert had already been acknowledged.")
    alert = AlertSerializer()


class KillResultSerializer(serializers.Serializer):
    stopped = serializers.IntegerField(help_text="Runs cancelled (not started yet) or asked to stop.")


class RunKillResultSerializer(serializers.Serializer):
    stopped = serializers.BooleanField()
    run = RunSerializer()


class SlotStatusSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    max_concurrent = serializers.IntegerField()
    memory_budget_mb = serializers.IntegerField()
    cpu_percent = serializers.IntegerField()
    running = serializers.IntegerField(allow_null=True, help_text="Runs holding a lease now (null: Redis down).")
    memory_in_use_mb = serializers.FloatField(allow_null=True, help_text="Sum of the expected peaks admitted.")
    cpu_in_use = serializers.FloatField(allow_null=True)
    waiting = serializers.IntegerField(help_text="Runs queued for admission.")
    live = serializers.BooleanField(help_text="False when the live figures could not be read.")
    error = serializers.CharField(allow_blank=True)
    running_runs = serializers.ListField(child=serializers.DictField(), help_text="Runs holding a lease.")
    waiting_runs = serializers.ListField(child=serializers.DictField(),
                                         help_text="Runs waiting for admission, in admission order.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="Per field (or query parameter, header, 'body'): the reasons.")
