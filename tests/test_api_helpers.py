"""Helpers shared by the API, dashboard and security tests (plain functions; no tests here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.test import Client

from api.models import ApiKey
from jobs.models import Job
from slots.models import ExecutionSlot, ensure_default_slots
from tests.helpers import write_script


def default_slots() -> dict[str, ExecutionSlot]:
    ensure_default_slots()
    return {s.name: s for s in ExecutionSlot.objects.all()}


def new_job(scripts_root: Path, name: str, body: str = "#!/bin/bash\necho ok\n", **fields: Any) -> Job:
    """A valid job (its script written into the allowed root), saved through full_clean."""
    slots = default_slots()
    script = write_script(scripts_root / f"{name}.sh", body)
    data: dict[str, Any] = {"script_path": str(script), "slot": slots[fields.pop("slot", "default")],
                            "schedule_type": "cron", "cron_expression": "*/5 * * * *", "timeout_seconds": 60}
    data.update(fields)
    job = Job(name=name, **data)
    job.full_clean()
    job.save()
    return job


def issue_key(name: str, scope: str = ApiKey.Scope.READ_WRITE) -> str:
    return ApiKey.objects.issue(name, scope=scope)[1]


class Api:
    """The Django test client speaking JSON with an API key."""

    def __init__(self, key: str | None, client: Client | None = None, header: str = "bearer") -> None:
        self.client = client or Client()
        self.headers: dict[str, str] = {}
        if key is not None:
            self.headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if header == "bearer" else {"HTTP_X_API_KEY": key}

    def get(self, path: str, params: dict | None = None, **extra):
        return self.client.get(path, params or {}, **self.headers, **extra)

    def post(self, path: str, body: Any = None, *, raw: str | None = None, **extra):
        data = raw if raw is not None else ("" if body is None else json.dumps(body))
        return self.client.post(path, data=data, content_type="application/json", **self.headers, **extra)

    def patch(self, path: str, body: Any = None, *, raw: str | None = None, **extra):
        data = raw if raw is not None else json.dumps(body)
        return self.client.patch(path, data=data, content_type="application/json", **self.headers, **extra)
