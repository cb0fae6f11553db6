"""Shared bits of the operator commands."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs.models import Job, JobRun


class JobCommand(BaseCommand):
    def add_json(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the result as JSON (for automation).")

    def get_job(self, name: str) -> Job:
        job = Job.objects.select_related("slot").filter(name=name).first()
        if job is None:
            close = list(Job.objects.filter(name__icontains=name[:20]).values_list("name", flat=True)[:5])
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise CommandError(f"--job: no job named {name!r}.{hint}")
        return job

    def emit_json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))


def run_dict(run: JobRun, *, output: bool = False) -> dict[str, Any]:
    data = {
        "id": run.pk,
        "job": run.job.name,
        "scheduled_for": run.scheduled_for,
        "state": run.state,
        "trigger": run.trigger,
        "attempt": run.attempt,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_s": run.duration_s,
        "queue_wait_s": run.queue_wait_s,
        "exit_code": run.exit_code,
        "peak_memory_mb": run.peak_memory_mb,
        "cpu_seconds": run.cpu_seconds,
        "worker_host": run.worker_host,
        "pid": run.pid,
        "error": run.error,
    }
    if output:
        data["output_tail"] = run.output_tail
    return data


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = (
        [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
        if rows
        else [len(h) for h in headers]
    )
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(lines)
