"""Example jobs for ``runstack --demo``: a newcomer sees runs within a minute."""

from __future__ import annotations

import json

from django.conf import settings

from jobs.models import Job
from slots.models import ExecutionSlot


def load_demo() -> list[str]:
    examples = settings.BASE_DIR / "examples"
    specs = json.loads((examples / "demo_jobs.json").read_text())
    names = []
    for spec in specs:
        spec = dict(spec)
        script = examples / spec.pop("script")
        slot = ExecutionSlot.objects.get(name=spec.pop("slot"))
        job = Job.objects.filter(name=spec["name"]).first() or Job(name=spec["name"])
        for key, value in spec.items():
            setattr(job, key, value)
        job.script_path = str(script)
        job.slot = slot
        job.schedule_type = Job.ScheduleType.CRON
        job.enabled = True
        job.full_clean()
        job.save()
        names.append(job.name)
    return names
