"""Deployment artefacts stay consistent with the code: compose, .env.example, settings, launcher."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from tests.helpers import TEST_PASSWORD, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nomysql


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_component_with_a_health_check():
    services = compose()["services"]
    for name in ("mysql", "redis", "web", "beat", "dispatch", "worker-default", "worker-heavy", "worker-light",
                 "flower"):
        assert name in services, name
        assert "healthcheck" in services[name], f"{name} has no health check"


def test_compose_workers_consume_the_queues_the_settings_route_to():
    services = compose()["services"]
    consumed = {}
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if "worker" in cmd:
            queue = cmd[cmd.index("-Q") + 1]
            consumed[queue] = (name, cmd)
    assert set(consumed) == {settings.DISPATCH_QUEUE, *settings.SLOT_QUEUES}
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed <= set(consumed)
    from slots.models import DEFAULT_SLOTS

    for slot in DEFAULT_SLOTS:
        _, cmd = consumed[slot["name"]]
        assert cmd[cmd.index("-P") + 1] == "threads"
        assert int(cmd[cmd.index("-c") + 1]) == slot["max_concurrent"]


def test_compose_takes_secrets_from_the_environment_only():
    text = (ROOT / "docker-compose.yml").read_text()
    for var in ("SECRET_KEY", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert re.search(r"\$\{" + var + r":\?", text), f"{var} must be required from the environment"
    env = compose()["x-app"]["environment"]
    assert env["SMARTCRON_MODE"] == "production"
    assert env["REDIS_URL"].startswith("redis://") and env["DATABASE_URL"].startswith("mysql://")
    flower = compose()["services"]["flower"]
    assert "--read_only=True" in flower["command"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]


def env_vars_read_by_code() -> set[str]:
    names = set()
    # envstr("NAME", ...) and the like, and any other quoted SMARTCRON_* name in a conf module.
    pattern = re.compile(r"env(?:str|int|bool|float|list)\(\s*\"([A-Z0-9_]+)\"|\"(SMARTCRON_[A-Z0-9_]+)\"")
    for path in list(ROOT.glob("*/conf.py")) + [ROOT / "smartcron_project" / "settings.py"]:
        names.update(a or b for a, b in pattern.findall(path.read_text()))
    return names


def test_env_example_lists_every_variable():
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = env_vars_read_by_code() - documented
    assert not missing, f"add to .env.example: {sorted(missing)}"


def run_manage(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SECRET_KEY", "ALLOWED_HOSTS", "SMARTCRON_"))}
    full.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = run_manage(["check"], SMARTCRON_MODE="production", ALLOWED_HOSTS="cron.example.com",
                        SMARTCRON_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts(tmp_path):
    result = run_manage(["check"], SMARTCRON_MODE="production", SECRET_KEY="x" * 60, SMARTCRON_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


def test_deploy_checks_are_clean_in_production(tmp_path):
    import secrets

    result = run_manage(["check", "--deploy", "--fail-level", "WARNING"], SMARTCRON_MODE="production",
                        SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="cron.example.com",
                        SMARTCRON_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_malformed_setting_is_named(tmp_path):
    result = run_manage(["check"], SMARTCRON_HEARTBEAT_SECONDS="often", SMARTCRON_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SMARTCRON_HEARTBEAT_SECONDS" in result.stderr


@pytest.mark.slow
def test_runstack_starts_everything_and_ctrl_c_stops_every_child(tmp_path):
    """The first README command's engine: bundled Redis, web, beat, workers, Flower; then Ctrl-C."""
    import psutil

    web, flower, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTCRON_", "REDIS_URL", "DATABASE_URL"))}
    env.update({"SMARTCRON_VAR_DIR": str(tmp_path / "var"), "SMARTCRON_EMBEDDED_REDIS_PORT": str(redis_port),
                "SMARTCRON_ADMIN_PASSWORD": TEST_PASSWORD, "SMARTCRON_ALLOW_ROOT": "1"})
    log = open(tmp_path / "stack.log", "w")
    proc = subprocess.Popen([sys.executable, "manage.py", "runstack", "--demo", "--port", str(web),
                             "--flower-port", str(flower)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up(url: str, auth: bool = False) -> int | None:
            try:
                return urllib.request.urlopen(url, timeout=2).status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return None

        wait_for(lambda: up(f"http://127.0.0.1:{web}/healthz") == 200, 120, 0.5, "web")
        assert up(f"http://127.0.0.1:{web}/admin/login/") == 200
        # Flower is behind basic auth.
        wait_for(lambda: up(f"http://127.0.0.1:{flower}/") == 401, 60, 0.5, "flower (401 without credentials)")
        out = (tmp_path / "stack.log").read_text()
        for name in ("redis", "web", "beat", "dispatch", "slot-default", "slot-heavy", "slot-light", "flower"):
            assert re.search(rf"^{name}\s", out, re.M), f"{name} not started:\n{out}"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 8
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
        log.close()
    time.sleep(0.5)
    alive = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"children left running: {alive}"
    assert "stopped." in (tmp_path / "stack.log").read_text()
