"""End to end in a real headless Chromium (Playwright): log in, run a job, kill one, acknowledge, timeline.

Needs Debian's chromium at /usr/bin/chromium (CI installs it); screenshots are saved
under artifacts/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from django.utils import timezone

from jobs import alerts
from jobs.models import Alert, JobRun, RunState
from tests.helpers import TEST_PASSWORD, wait_for

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
PASSWORD = TEST_PASSWORD  # a throwaway account, fresh for each session

# Skipped without Chromium on a developer's machine; in CI (which installs it) a missing
# browser is a failure, not a skip.
if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
from playwright import sync_api  # noqa: E402  (after the Chromium check on purpose)

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)


@pytest.fixture
def page(live_server, staff, monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=live_server.url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before a kill
        log_in(page)
        yield page
        context.close()
        browser.close()


def log_in(page) -> None:
    page.goto("/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    sync_api.expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def reload_until(page, predicate, timeout: float, message: str) -> None:
    def check() -> bool:
        page.reload()
        return predicate()

    wait_for(check, timeout, 0.5, message)


@pytest.mark.workers
def test_run_now_shows_the_run_and_kill_stops_a_running_one(page, make_job, workers, scripts_root):
    quick = make_job("e2e-hello", "#!/bin/bash\necho hello from the browser test\n", slot="light")
    long = make_job("e2e-sleeper", f"#!/bin/bash\necho $$ > {scripts_root}/sleeper.pid\nsleep 300\n")
    old = JobRun.objects.create(job=quick, scheduled_for=timezone.now().replace(microsecond=0) - dt.timedelta(hours=1),
                                state=RunState.SUCCEEDED, duration_s=0.2, exit_code=0)
    workers.start_stack()

    # The job list leads to the job page, which shows its runs.
    page.goto("/jobs/")
    page.get_by_role("link", name="e2e-hello").click()
    sync_api.expect(page.get_by_role("heading", name=re.compile("e2e-hello"))).to_be_visible()
    sync_api.expect(page.locator(f'tr[data-run="{old.pk}"]')).to_contain_text("succeeded")

    page.get_by_role("button", name="Run now").click()
    sync_api.expect(page.locator(".msg-success")).to_contain_text("queued")
    run = JobRun.objects.filter(job=quick, trigger=JobRun.Trigger.MANUAL).get()
    row = page.locator(f'tr[data-run="{run.pk}"]')
    sync_api.expect(row).to_be_visible()
    reload_until(page, lambda: "succeeded" in row.inner_text(), 60, "the new run to succeed on the page")
    shot(page, "job-page-after-run-now")

    # A long job shows under "Running now" with its elapsed time, and the kill button stops it.
    page.goto(f"/jobs/{long.pk}/")
    page.get_by_role("button", name="Run now").click()
    sleeper = JobRun.objects.filter(job=long).get()
    wait_for(lambda: JobRun.objects.get(pk=sleeper.pk).state == RunState.RUNNING, 60, 0.2, "the sleeper to run")
    page.goto("/")
    running = page.locator("section", has=page.get_by_role("heading", name=re.compile("Running now")))
    sync_api.expect(running).to_contain_text("e2e-sleeper")
    sync_api.expect(running.locator("td.elapsed")).to_have_text(re.compile(r"\d+ s"))
    shot(page, "overview-running")
    running.get_by_role("button", name=f"Kill run {sleeper.pk} of e2e-sleeper").click()
    sync_api.expect(page.locator(".msg-success")).to_contain_text("stop requested")
    wait_for(lambda: JobRun.objects.get(pk=sleeper.pk).is_final, 60, 0.2, "the sleeper to stop")
    assert JobRun.objects.get(pk=sleeper.pk).state == RunState.CANCELLED
    page.goto(f"/jobs/{long.pk}/")
    sync_api.expect(page.locator(f'tr[data-run="{sleeper.pk}"]')).to_contain_text("cancelled")


def test_acknowledge_an_alert_from_the_overview(page, make_job):
    job = make_job("e2e-flaky")
    alert = alerts.raise_alert(job, Alert.Type.FAILURE, Alert.Severity.ERROR, "e2e-flaky: exit code 2")
    page.goto("/")
    section = page.locator("section", has=page.get_by_role("heading", name=re.compile("Open alerts")))
    sync_api.expect(section).to_contain_text("e2e-flaky: exit code 2")
    shot(page, "overview-open-alert")
    section.get_by_label(f"Note for alert {alert.pk}").fill("looking into it")
    section.get_by_role("button", name=f"Acknowledge alert {alert.pk}").click()
    sync_api.expect(page.locator(".msg-success")).to_contain_text("acknowledged")
    sync_api.expect(section).to_contain_text("acknowledged by ops")
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.ack_note == "looking into it"


def test_the_timeline_shows_the_schedule_and_collisions(page, make_job):
    for i in range(3):
        make_job(f"e2e-export-{i}", schedule_type="cron", cron_expression="0 2 * * *", slot="heavy",
                 expected_duration_s=1500)
    make_job("e2e-ping", schedule_type="interval", interval_seconds=300, slot="light", expected_duration_s=5)
    page.goto("/")
    page.get_by_role("link", name="Timeline", exact=True).click()
    svg = page.locator("svg.timeline")
    sync_api.expect(svg).to_be_visible()
    sync_api.expect(svg.locator("text", has_text="e2e-export-0")).to_be_visible()
    sync_api.expect(svg.locator("desc")).to_contain_text("slot heavy: peak 3 runs at 02:00 UTC (limit 2)")
    sync_api.expect(page.locator("table.grid")).to_contain_text("02:00:00–02:25:00")
    shot(page, "timeline")
    svg.locator("a", has_text="e2e-ping").click()
    sync_api.expect(page.get_by_role("heading", name=re.compile("e2e-ping"))).to_be_visible()
