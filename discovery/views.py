"""GET /api/v1/schedule: this server's schedule and 24 h load, for peers (any valid API key)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import IsReadOnlyKey
from discovery.peer import schedule_payload


class ScheduleView(APIView):
    """Jobs with their schedules, start seconds, expected durations and memory, and per-minute load."""

    permission_classes = [IsReadOnlyKey]

    @extend_schema(
        summary="This server's schedule for peers",
        description=("Every schedulable job (cron or interval, timezone, wait_seconds, expected duration and peak "
                     "memory, slot) and the load per minute over 24 h (maximum concurrent runs and memory). "
                     "A read-only key is enough."),
        responses={200: OpenApiResponse(description="schedule payload (schema_version 1)")},
    )
    def get(self, request: Request) -> Response:
        return Response(schedule_payload())


@extend_schema(exclude=True)
class ScheduleAliasView(ScheduleView):
    """``/api/v1/schedule`` without the slash (the address peers are configured with)."""
