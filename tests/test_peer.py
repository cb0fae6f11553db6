"""Peer schedules: two real instances on loopback, and peers that answer garbage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from django.core.management import call_command

from discovery import peer
from jobs.models import Alert
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)

PEER_JOBS = """
from jobs.models import Job
from slots.models import ExecutionSlot
import os
slot = ExecutionSlot.objects.get(name="default")
script = os.path.join(os.environ["SMARTCRON_SCRIPT_ROOTS"], "peer.sh")
for i in range(5):
    j = Job(name=f"peer-job-{i}", script_path=script, schedule_type="cron", cron_expression="0 * * * *",
            wait_seconds=i, expected_duration_s=40, expected_memory_mb=500, slot=slot)
    j.full_clean(); j.save()
"""


@pytest.fixture(scope="module")
def peer_instance(tmp_path_factory):
    """A second Smart Cron (own settings, own SQLite database) served by gunicorn on loopback."""
    tmp = tmp_path_factory.mktemp("peer")
    scripts = tmp / "scripts"
    scripts.mkdir()
    (scripts / "peer.sh").write_text("#!/bin/sh\ntrue\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTCRON_", "DATABASE_URL", "REDIS_URL"))}
    env.update({"SMARTCRON_VAR_DIR": str(tmp / "var"), "SMARTCRON_SCRIPT_ROOTS": str(scripts),
                "DJANGO_SETTINGS_MODULE": "smartcron_project.settings"})

    def manage(*args: str) -> str:
        res = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    manage("migrate", "-v0")
    manage("shell", "-c", PEER_JOBS)
    key = manage("create_api_key", "--name", "their-peer", "--read-only").strip()
    port = free_port()
    log = open(tmp / "gunicorn.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "smartcron_project.wsgi:application",
                             "--bind", f"127.0.0.1:{port}", "--workers", "1"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/v1/schedule"

    def up() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code in (200, 503)
        except requests.RequestException:
            return False

    wait_for(up, 60, 0.2, "peer instance")
    yield url, key
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture
def peer_settings(settings, tmp_path):
    settings.PEER_ALLOW_PRIVATE = True
    settings.PEER_CACHE_FILE = str(tmp_path / "peer.json")
    return settings


def test_the_schedule_api_needs_a_key(peer_instance):
    url, key = peer_instance
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer sc_wrong_key"}, timeout=10).status_code == 401
    resp = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert resp.status_code == 200
    data = resp.json()
    assert data["total_active_jobs"] == 5
    assert len(data["load_per_minute"]) == 1440
    assert data["load_per_minute"][0]["jobs"] == 5  # all five start in minute 0 of every hour
    assert data["load_per_minute"][1]["jobs"] == 0
    assert {j["cron"] for j in data["jobs"]} == {"0 * * * *"}


def test_we_fetch_the_peer_and_place_our_jobs_in_its_quiet_seconds(peer_instance, peer_settings, make_job, capsys):
    url, key = peer_instance
    peer_settings.PEER_API_KEY = key
    for i in range(2):
        make_job(f"ours-{i}", schedule_type="cron", cron_expression="0 * * * *", wait_seconds=0,
                 expected_duration_s=8, expected_memory_mb=100)
    call_command("fetch_peer_schedule", "--url", url, "--reoptimize", "--apply", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["error"] is None
    assert report["peer"]["total_active_jobs"] == 5
    assert report["peer"]["busiest"][0]["starting"] == [f"peer-job-{i}" for i in range(5)]
    plan = report["ours"]["plan"]
    # The peer's five 40 s jobs occupy seconds 0-43 of minute 0: ours fit after them, one
    # after the other (44-51, 52-59), which keeps both the total and our slot's peak minimal.
    assert plan["after"]["peak_jobs"] == 5
    assert plan["before"]["peak_jobs"] == 7
    from jobs.models import Job

    for job in Job.objects.filter(name__startswith="ours-"):
        assert job.wait_seconds >= 44, (job.name, job.wait_seconds)
    assert peer.load_cache() is not None
    # Text output: stats, busiest table and our table with statuses.
    call_command("fetch_cis_schedule", "--cached")
    out = capsys.readouterr().out
    assert "Total active jobs on the peer: 5" in out
    assert "Busiest times" in out and "peer-job-0" in out
    assert "clear" in out
    # The survival load model is offered here too (plan only, nothing applied).
    call_command("fetch_peer_schedule", "--cached", "--reoptimize", "--load-model", "survival", "--json")
    plan = json.loads(capsys.readouterr().out)["ours"]["plan"]
    assert plan["after"]["peak_jobs"] == 5  # ours still clear of the peer's five runs


class _Garbage(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        routes = {
            "/notjson": (200, b"<html>surprise</html>"),
            "/big": (200, b"[" + b"1," * (3 * 1024 * 1024) + b"1]"),
            "/500": (500, b"{}"),
            "/badcron": (200, json.dumps({"jobs": [{"name": "a", "cron": "0 * * * *", "duration_s": 1},
                                                   {"name": "b", "cron": "99 * * * *", "duration_s": 1}]}).encode()),
            "/negative": (200, json.dumps({"jobs": [{"name": "a", "cron": "0 * * * *", "duration_s": -5}]}).encode()),
            "/list": (200, b"[1, 2, 3]"),
        }
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        status, body = routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def garbage_peer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(("path", "fragment"), [
    ("/notjson", "not JSON"),
    ("/big", "larger than the limit"),
    ("/500", "HTTP 500"),
    ("/redirect", "redirect"),
    ("/badcron", "jobs[1].cron: minute field '99'"),
    ("/negative", "jobs[0].duration_s: -5 is outside"),
    ("/list", "expected a JSON object"),
])
def test_bad_answers_are_refused_and_the_last_good_cache_stays(garbage_peer, peer_settings, path, fragment):
    good = peer.validate_payload({"server": "x", "jobs": [{"name": "kept", "cron": "5 4 * * *", "duration_s": 3}]})
    peer.save_cache(good)
    peer_settings.PEER_MAX_BYTES = 1024 * 1024
    schedule, error = peer.refresh(garbage_peer + path, "key")
    assert error is not None and fragment in error, error
    assert schedule is not None and schedule.jobs[0]["name"] == "kept"
    alert = Alert.objects.get(type=Alert.Type.PEER, resolved_at__isnull=True)
    assert fragment in alert.message and "keeping the schedule" in alert.message


def test_private_addresses_and_other_schemes_are_refused_by_default(settings):
    settings.PEER_ALLOW_PRIVATE = False
    for url, fragment in [("http://127.0.0.1:9/schedule", "private/loopback"),
                          ("http://localhost/schedule", "private/loopback"),
                          ("http://169.254.169.254/latest", "private/loopback"),
                          ("file:///etc/passwd", "scheme 'file' refused"),
                          ("gopher://example.com/", "scheme 'gopher' refused"),
                          ("http://user:pw@example.com/", "credentials in the URL")]:
        with pytest.raises(peer.PeerError, match=None) as exc:
            peer.check_url(url, allow_private=False)
        assert fragment in str(exc.value), (url, str(exc.value))


def test_the_command_explains_a_missing_peer(settings):
    from django.core.management.base import CommandError

    settings.PEER_URL = ""
    with pytest.raises(CommandError, match="no peer URL"):
        call_command("fetch_peer_schedule")


def test_plan_options_need_reoptimize(settings):
    from django.core.management.base import CommandError

    for option in (["--apply"], ["--load-model", "survival"]):
        with pytest.raises(CommandError, match=f"{option[0]} needs --reoptimize"):
            call_command("fetch_peer_schedule", "--cached", *option)


def test_a_daily_refresh_is_scheduled_when_a_peer_is_configured(settings):
    from django_celery_beat.models import PeriodicTask

    from jobs.beat_sync import PEER_REFRESH_NAME, sync_all

    settings.PEER_URL = "https://peer.example.com/api/v1/schedule"
    sync_all()
    task = PeriodicTask.objects.get(name=PEER_REFRESH_NAME)
    assert task.task == "discovery.refresh_peer" and task.queue == "dispatch"
    assert (task.crontab.minute, task.crontab.hour) == ("17", "3")
    settings.PEER_URL = ""
    sync_all()
    assert not PeriodicTask.objects.filter(name=PEER_REFRESH_NAME).exists()
