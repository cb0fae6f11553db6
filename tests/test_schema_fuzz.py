"""Fuzz the API from its own OpenAPI schema (schemathesis) against a live server: no 500s, ever.

Every operation gets a bounded number of generated requests, schema-valid and
schema-violating ones (schemathesis' strategies driven by Hypothesis directly: its
pytest plugin does not run under pytest 9 yet), sent
over HTTP to pytest-django's live server with a read-write key; path ids are often
pointed at objects that exist, so that the handlers behind the 404 are exercised too.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402

from jobs import alerts  # noqa: E402
from jobs.models import Alert, JobRun, RunState, Tag  # noqa: E402
from tests.test_api_helpers import default_slots, issue_key, new_job  # noqa: E402

pytestmark = [pytest.mark.django_db(transaction=True)]
EXAMPLES = 15  # per operation and mode: keeps the whole run well under two minutes
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Target:
    headers: dict[str, str]
    ids: dict[str, int]  # "jobs" / "runs" / "alerts" -> an id that exists


@pytest.fixture
def target(live_server, redis_client, scripts_root, settings) -> Target:
    from django.core.cache import cache
    from django.utils import timezone

    cache.clear()
    settings.API_BAD_KEY_LIMIT = 10**6  # the fuzzer is not a brute-forcer
    default_slots()
    Tag.objects.create(name="nightly")
    job = new_job(scripts_root, "fuzz-target", description="fuzzed")
    new_job(scripts_root, "fuzz-interval", schedule_type="interval", interval_seconds=300, slot="light")
    now = timezone.now().replace(microsecond=0)
    done = JobRun.objects.create(job=job, scheduled_for=now - dt.timedelta(hours=1), state=RunState.SUCCEEDED,
                                 duration_s=2.5, output_tail="ok\n")
    JobRun.objects.create(job=job, scheduled_for=now + dt.timedelta(hours=1), state=RunState.PENDING)
    alert = alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "fuzz-target failed")
    key = issue_key("fuzzer")
    # Both headers, so that the key wins over any header value the generator makes up for them.
    return Target({"Authorization": f"Bearer {key}", "X-API-Key": key},
                  {"jobs": job.pk, "runs": done.pk, "alerts": alert.pk})


def _fuzz_operation(operation, mode, target: Target, statuses: Counter) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def fuzz(case) -> None:
        ids = (case.path_parameters or {}).get("id")
        if isinstance(ids, int) and ids % 2 == 0:
            # Half of the generated ids point at a real object (ids are rarely hit by chance).
            case.path_parameters["id"] = target.ids[operation.path.split("/")[3]]
        response = case.call_and_validate(headers=target.headers, checks=CHECKS)
        statuses[response.status_code] += 1

    fuzz()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_never_answers_500_and_keeps_to_its_schema(target, live_server, mode):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/schema/",
                                           headers={**target.headers, "Accept": "application/json"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    statuses: Counter = Counter()
    for operation in operations:
        try:
            _fuzz_operation(operation, mode, target, statuses)
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}:\n{exc}")
    assert not failures, "\n\n".join(failures)
    print(f"{mode} cases by status: {dict(sorted(statuses.items()))}")
    # The key must have worked: authenticated answers, not a wall of 401s.
    assert sum(n for code, n in statuses.items() if code < 300) >= len(operations) // 2, statuses
