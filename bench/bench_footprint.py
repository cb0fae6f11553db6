"""Footprint: summed RSS of the whole stack when idle (web, beat, all workers, Flower, Redis).

Starts `manage.py runstack` in a temporary directory (bundled Redis on a free port, SQLite),
waits for it to settle, and reads every child's RSS and USS with psutil.

    .venv/bin/python bench/bench_footprint.py [--settle 20] [--demo]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port, wait_for  # noqa: E402


def label(cmdline: list[str]) -> str:
    """A short name for a child: its command line without the interpreter and long paths."""
    text = " ".join(cmdline[1:]).strip() or (cmdline[0] if cmdline else "?")  # redis-server rewrites its title
    text = re.sub(r"^-m smartcron_project\.celery_cli -A smartcron_project( --skip-checks)?", "celery", text)
    return re.sub(r"^\S*/", "", text)[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after start-up")
    parser.add_argument("--demo", action="store_true", help="with the demo jobs loaded (not quite idle)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smartcron-footprint-"))
    web, flower, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTCRON_", "REDIS_URL", "DATABASE_URL"))}
    env.update({"SMARTCRON_VAR_DIR": str(tmp / "var"), "SMARTCRON_EMBEDDED_REDIS_PORT": str(redis_port),
                "SMARTCRON_ADMIN_PASSWORD": secrets.token_urlsafe(16), "SMARTCRON_ALLOW_ROOT": "1"})
    argv = [sys.executable, "manage.py", "runstack", "--port", str(web), "--flower-port", str(flower)]
    if args.demo:
        argv.append("--demo")
    log = open(tmp / "stack.log", "w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def web_up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(web_up, 120, 0.5, "web")
        time.sleep(args.settle)
        rows = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                mem = child.memory_full_info()
                rows.append((label(child.cmdline()), mem.rss, mem.uss))
            except psutil.Error:
                continue
        launcher = psutil.Process(proc.pid).memory_full_info()
        rows.append(("manage.py runstack (launcher)", launcher.rss, launcher.uss))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
        log.close()
    mb = 1024 * 1024
    print(f"{'process':72} {'RSS MB':>8} {'USS MB':>8}")
    for name, rss, uss in sorted(rows, key=lambda r: -r[1]):
        print(f"{name:72} {rss / mb:8.1f} {uss / mb:8.1f}")
    print(f"{'TOTAL (' + str(len(rows)) + ' processes)':72} {sum(r[1] for r in rows) / mb:8.1f} "
          f"{sum(r[2] for r in rows) / mb:8.1f}")
    print("RSS counts shared pages once per process; USS (unique set) is what each process alone costs.")


if __name__ == "__main__":
    main()
