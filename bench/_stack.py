"""A throwaway Smart Cron installation for benchmarks: temp dir, own Redis, SQLite, real workers.

Import this module before Django is set up: ``env = prepare()`` sets the environment of
this process and returns the one to give worker/beat subprocesses.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _fresh_mysql_database(url: str) -> None:
    """Drop and create the database named in a mysql:// URL (benchmarks only)."""
    import dj_database_url
    import MySQLdb

    cfg = dj_database_url.parse(url)
    conn = MySQLdb.connect(host=cfg["HOST"] or "127.0.0.1", port=int(cfg["PORT"] or 3306), user=cfg["USER"],
                           passwd=cfg["PASSWORD"])
    cur = conn.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS `{cfg['NAME']}`")
    cur.execute(f"CREATE DATABASE `{cfg['NAME']}` CHARACTER SET utf8mb4")
    conn.close()


def prepare(**extra: str) -> dict[str, str]:
    """Set up; a mysql:// DATABASE_URL in the environment is used (and recreated) instead of SQLite."""
    from tests.helpers import RedisServer

    if os.environ.get("DATABASE_URL", "").startswith("mysql"):
        _fresh_mysql_database(os.environ["DATABASE_URL"])

    tmp = Path(tempfile.mkdtemp(prefix="smartcron-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    redis = RedisServer(tmp / "redis")
    atexit.register(redis.stop)
    scripts = tmp / "scripts"
    scripts.mkdir()
    env = {
        "SMARTCRON_VAR_DIR": str(tmp / "var"),
        "REDIS_URL": redis.url,
        "SMARTCRON_SCRIPT_ROOTS": str(scripts),
        "SMARTCRON_ALLOW_ROOT": "1",
        "DJANGO_SETTINGS_MODULE": "smartcron_project.settings",
        "LOG_LEVEL": "WARNING",
        **extra,
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    full = dict(os.environ)
    full["BENCH_TMP"] = str(tmp)
    return full


def celery_bin() -> str:
    return str(Path(sys.executable).parent / "celery")


def start_beat(env: dict[str, str], logdir: Path) -> subprocess.Popen:
    log = open(logdir / "beat.log", "wb")  # noqa: SIM115
    return subprocess.Popen([celery_bin(), "-A", "smartcron_project", "beat", "-l", "info", "--pidfile=",
                             "-s", str(logdir / "beat-schedule")], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
