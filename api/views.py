"""The JSON API (``/api/v1/``): jobs, runs, alerts, slots, health and trends."""

from __future__ import annotations

import hashlib

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import filters, serializers
from api.pagination import MAX_ID, PagePagination, RunCursorPagination
from api.permissions import api_key_of
from api.status import health_summary, performance_trends, slot_overview
from jobs import alerts, beat_sync, services
from jobs.models import Alert, Job, JobRun, Priority, RunState

IDEMPOTENCY_HEADER = "Idempotency-Key"
_P = OpenApiParameter


def _choice(name: str, values: list[str], description: str, many: bool = True) -> OpenApiParameter:
    text = description + (" Comma-separated for several." if many else "")
    return _P(name, str, description=text, enum=None if many else values, required=False)


JOB_FILTERS = [
    _P("enabled", bool, description="Only enabled (true) or disabled (false) jobs."),
    _choice("status", Job.Status.values, "Job status: " + ", ".join(Job.Status.values) + "."),
    _P("slot", str, description="Slot name."),
    _choice("category", Job.Category.values, "Category: " + ", ".join(Job.Category.values) + "."),
    _choice("priority", Priority.values, "Priority: " + ", ".join(Priority.values) + "."),
    _choice("health", Job.Health.values, "Health: " + ", ".join(Job.Health.values) + "."),
    _choice("schedule_type", Job.ScheduleType.values, "Schedule type."),
    _P("tag", str, many=True, description="Tag name; repeat for several (any matches)."),
    _P("name", str, description="Exact job name."),
    _P("search", str, description="Substring of the name, description or script path."),
]
RUN_FILTERS = [
    _P("job", int, description="Job id."),
    _choice("state", RunState.values, "Run state: " + ", ".join(RunState.values) + "."),
    _choice("trigger", JobRun.Trigger.values, "Trigger: " + ", ".join(JobRun.Trigger.values) + "."),
    _P("slot", str, description="Slot name."),
    _P("since", OpenApiTypes.DATETIME, description="Planned at or after (ISO 8601; UTC when no offset)."),
    _P("until", OpenApiTypes.DATETIME, description="Planned before (ISO 8601)."),
]
ALERT_FILTERS = [
    _P("open", bool, description="Only open (true) or resolved (false) alerts."),
    _P("acknowledged", bool, description="Only acknowledged (true) or unacknowledged (false) alerts."),
    _choice("severity", Alert.Severity.values, "Severity: " + ", ".join(Alert.Severity.values) + "."),
    _choice("type", Alert.Type.values, "Alert type."),
    _P("job", int, description="Job id."),
]
IDEMPOTENCY_PARAM = _P(
    IDEMPOTENCY_HEADER, str, location=_P.HEADER, required=False,
    description="Any unique string (1-200 printable ASCII characters, e.g. a UUID). Retrying the request with "
                "the same key (same job, same API key or user) returns the run the first request started.")


def object_or_404(qs: QuerySet, pk: str):
    """``qs.get(pk=pk)``, with ids that cannot exist (too large for the database) a plain 404."""
    if not str(pk).isdigit() or int(pk) > MAX_ID:
        raise NotFound("not found")
    return get_object_or_404(qs, pk=int(pk))


class ReadObjectMixin:
    def get_object(self):
        obj = object_or_404(self.get_queryset(), self.kwargs["pk"])
        self.check_object_permissions(self.request, obj)
        return obj


@extend_schema_view(
    list=extend_schema(summary="List jobs", parameters=JOB_FILTERS),
    retrieve=extend_schema(summary="One job", responses=serializers.JobDetailSerializer),
    create=extend_schema(summary="Create a job", responses={201: serializers.JobDetailSerializer}),
    partial_update=extend_schema(summary="Change a job (only the fields given)",
                                 responses=serializers.JobDetailSerializer),
)
class JobViewSet(ReadObjectMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                 mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """Jobs: what runs, when and where."""

    queryset = Job.objects.select_related("slot").prefetch_related("tags").order_by("name")
    serializer_class = serializers.JobSerializer
    pagination_class = PagePagination
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "head", "options"]

    @property
    def write_permission(self) -> str:
        return "jobs.add_job" if self.action == "create" else "jobs.change_job"

    def get_queryset(self) -> QuerySet[Job]:
        qs = super().get_queryset()
        if self.action == "list":
            qs = filters.filter_jobs(qs, self.request.query_params)
        return qs

    def get_serializer_class(self):
        if self.action in ("retrieve", "create", "partial_update", "enable", "disable"):
            return serializers.JobDetailSerializer
        return serializers.JobSerializer

    def update(self, request: Request, *args, **kwargs) -> Response:
        kwargs["partial"] = True  # PATCH only: PUT is not offered
        return super().update(request, *args, **kwargs)

    def _set_enabled(self, enabled: bool) -> Response:
        job = self.get_object()
        beat_sync.set_enabled(Job.objects.filter(pk=job.pk), enabled)
        job = self.get_object()
        return Response(serializers.JobDetailSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(summary="Enable a job (beat ticks it again)", request=None,
                   responses=serializers.JobDetailSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str) -> Response:
        return self._set_enabled(True)

    @extend_schema(summary="Disable a job (no more ticks; running runs go on)", request=None,
                   responses=serializers.JobDetailSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str) -> Response:
        return self._set_enabled(False)

    @extend_schema(
        summary="Run a job now", request=None, parameters=[IDEMPOTENCY_PARAM],
        responses={202: OpenApiResponse(serializers.RunSerializer, description="A run was created."),
                   200: OpenApiResponse(serializers.RunSerializer,
                                        description="Replayed: the run an earlier request with this key started.")})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        key = self._idempotency_key(request, job)
        run, created = services.run_now(job, idempotency_key=key)
        data = serializers.RunSerializer(run, context=self.get_serializer_context()).data
        headers = {"Location": reverse("api:run-detail", args=[run.pk])}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return Response(data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK, headers=headers)

    @staticmethod
    def _idempotency_key(request: Request, job: Job) -> str | None:
        raw = request.headers.get(IDEMPOTENCY_HEADER)
        if raw is None:
            return None
        if not 1 <= len(raw) <= 200 or not all(" " <= c <= "~" for c in raw):
            raise ValidationError({IDEMPOTENCY_HEADER: ["must be 1-200 printable ASCII characters"]})
        key = api_key_of(request)
        who = f"k{key.pk}" if key is not None else f"u{request.user.pk}"
        # Scoped per caller and job, hashed so that any client string fits the column.
        digest = hashlib.sha256(raw.encode()).hexdigest()
        return f"api:{who}:j{job.pk}:{digest}"

    @extend_schema(summary="Stop every active run of a job", request=None,
                   responses=serializers.KillResultSerializer)
    @action(detail=True, methods=["post"])
    def kill(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        return Response({"stopped": services.kill_job(job)})


@extend_schema_view(
    list=extend_schema(summary="List runs (newest first)", parameters=RUN_FILTERS),
    retrieve=extend_schema(summary="One run, with the tail of its output", responses=serializers.RunDetailSerializer),
)
class RunViewSet(ReadObjectMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Runs: one row per planned second of a job, and what happened."""

    queryset = JobRun.objects.select_related("job")
    serializer_class = serializers.RunSerializer
    pagination_class = RunCursorPagination
    lookup_value_regex = "[0-9]+"
    write_permission = "jobs.change_jobrun"

    def get_queryset(self) -> QuerySet[JobRun]:
        qs = super().get_queryset()
        if self.action == "list":
            qs = filters.filter_runs(qs.defer("output_tail"), self.request.query_params)
        return qs

    def get_serializer_class(self):
        return serializers.RunDetailSerializer if self.action == "retrieve" else serializers.RunSerializer

    @extend_schema(summary="Stop one run (cancel it if it has not started)", request=None,
                   responses={200: serializers.RunKillResultSerializer,
                              409: OpenApiResponse(serializers.ErrorSerializer, description="Already finished.")})
    @action(detail=True, methods=["post"])
    def kill(self, request: Request, pk: str) -> Response:
        run = self.get_object()
        if run.is_final:
            return Response({"detail": f"run {run.pk} already finished ({run.state})", "code": "conflict"},
                            status=status.HTTP_409_CONFLICT)
        stopped = services.kill_run(run)
        run.refresh_from_db()
        return Response({"stopped": stopped, "run": serializers.RunSerializer(run).data})


@extend_schema_view(
    list=extend_schema(summary="List alerts (most recent first)", parameters=ALERT_FILTERS),
    retrieve=extend_schema(summary="One alert"),
)
class AlertViewSet(ReadObjectMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts raised by failures, anomalies, missed runs."""

    queryset = Alert.objects.select_related("job", "acknowledged_by").order_by("-last_seen", "-id")
    serializer_class = serializers.AlertSerializer
    pagination_class = PagePagination
    lookup_value_regex = "[0-9]+"
    write_permission = "jobs.change_alert"

    def get_queryset(self) -> QuerySet[Alert]:
        qs = super().get_queryset()
        if self.action == "list":
            qs = filters.filter_alerts(qs, self.request.query_params)
        return qs

    @extend_schema(summary="Acknowledge an alert", request=serializers.AcknowledgeSerializer,
                   responses=serializers.AcknowledgeResultSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str) -> Response:
        alert = self.get_object()
        body = serializers.AcknowledgeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        note = body.validated_data["note"]
        key = api_key_of(request)
        if key is not None:
            # A key is not a user: say in the note which key acknowledged.
            note = f"[API key {key.name}] {note}".strip()
        changed = alerts.acknowledge(alert, None if key is not None else request.user, note)
        alert = self.get_object()
        return Response({"changed": changed, "alert": serializers.AlertSerializer(alert).data})


class SlotListView(APIView):
    """Live usage of every execution slot."""

    @extend_schema(summary="Slots and their live usage", responses=serializers.SlotStatusSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response([s.as_dict() for s in slot_overview()])


class _MetricsView(APIView):
    metric = staticmethod(health_summary)

    def get(self, request: Request) -> Response:
        jobs_qs = filters.filter_jobs(Job.objects.all(), request.query_params)
        return Response(self.metric(jobs_qs=jobs_qs))


# The records are shaped by jobs.health (one object per job); documented as free-form objects.
_RECORDS = {"type": "array", "items": {"type": "object", "additionalProperties": True}}
_METRIC_RESPONSES = {200: OpenApiResponse(_RECORDS, description="One record per job (from jobs.health).")}


class HealthView(_MetricsView):
    """Health of each job: critical, warning, healthy, with the reasons (jobs.health)."""

    metric = staticmethod(health_summary)

    @extend_schema(summary="Health summary", parameters=JOB_FILTERS, responses=_METRIC_RESPONSES)
    def get(self, request: Request) -> Response:
        return super().get(request)


class TrendsView(_MetricsView):
    """Performance trends of each job (duration and memory over time; jobs.health)."""

    metric = staticmethod(performance_trends)

    @extend_schema(summary="Performance trends", parameters=JOB_FILTERS, responses=_METRIC_RESPONSES)
    def get(self, request: Request) -> Response:
        return super().get(request)


class ApiRootView(APIView):
    """Where everything is."""

    @extend_schema(summary="API index", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        names = {"jobs": "api:job-list", "runs": "api:run-list", "alerts": "api:alert-list", "slots": "api:slots",
                 "health": "api:health", "trends": "api:trends", "schema": "api:schema"}
        links = {k: request.build_absolute_uri(reverse(v)) for k, v in names.items()}
        return Response(links)
