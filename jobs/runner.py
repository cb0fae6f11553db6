"""Run one script as a child process tree, measure it, and stop it when it misbehaves.

The script runs in its own session (so in its own process group).  While it runs, the
whole tree is sampled with psutil: summed RSS (peak kept) and CPU seconds.  A timeout,
a memory limit or a cancel request stops the *whole tree*: SIGTERM to the group and to
every descendant seen (a grandchild may have left the group with setsid), a grace
period, then SIGKILL.  When the leader exits, whatever it left behind in its group is
stopped the same way, so no job leaves processes on the machine.

Nothing here touches the database: the caller passes callbacks.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

import psutil

MB = 1024 * 1024


class Outcome:
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED_MEMORY = "killed_memory"
    CANCELLED = "cancelled"


@dataclasses.dataclass
class RunResult:
    outcome: str
    exit_code: int | None
    started_at: float  # time.time() right after the child was created
    duration_s: float
    peak_rss_bytes: int
    cpu_seconds: float
    output_tail: str
    pid: int
    error: str = ""

    @property
    def peak_memory_mb(self) -> float:
        return self.peak_rss_bytes / MB


@dataclasses.dataclass
class RunSpec:
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout_s: float | None = None
    memory_limit_bytes: int | None = None
    user: str | None = None
    sample_interval_s: float = 0.1
    kill_grace_s: float = 5.0
    tail_bytes: int = 16384


class _TailReader(threading.Thread):
    """Drains the child's combined stdout/stderr, keeping only the last bytes."""

    def __init__(self, fd: int, limit: int) -> None:
        super().__init__(daemon=True, name=f"tail-{fd}")
        self.fd = fd
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.truncated = False

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.chunks.append(chunk)
                self.size += len(chunk)
                while self.size - len(self.chunks[0]) >= self.limit:
                    self.size -= len(self.chunks.popleft())
                    self.truncated = True
        finally:
            os.close(self.fd)

    def text(self) -> str:
        data = b"".join(self.chunks)
        if len(data) > self.limit:
            data = data[-self.limit :]
            self.truncated = True
        out = data.decode("utf-8", "replace")
        return ("[...]\n" + out) if self.truncated else out


class _ExitWaiter:
    """Wait for a child's exit with a timeout: a pidfd where the kernel has them (5.3+)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        try:
            self.fd = os.pidfd_open(pid)
            self.poller = select.poll()
            self.poller.register(self.fd, select.POLLIN)
        except (AttributeError, OSError):
            self.fd = None

    def wait(self, timeout_s: float) -> bool:
        """True when the child has (probably) exited; the caller reaps it."""
        if self.fd is not None:
            return bool(self.poller.poll(max(0, int(timeout_s * 1000))))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.005)
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _demote(user: str) -> tuple[int, int, list[int]]:
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return entry.pw_uid, entry.pw_gid, groups


class TreeWatcher:
    """Keeps track of every process that ever belonged to the run's tree."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pgid = pid
        self.known: dict[int, psutil.Process] = {}
        # Set once the leader is reaped: its pid may be reused, and a dead leader has no
        # children to find (orphans were re-parented and are followed from ``known``), so
        # no more scans of the whole process table (psutil's ppid map reads every /proc entry).
        self.leader_gone = False
        try:
            self.root: psutil.Process | None = psutil.Process(pid)
            self.known[pid] = self.root
        except psutil.Error:
            self.root = None

    def refresh(self) -> list[psutil.Process]:
        if self.root is not None and not self.leader_gone:
            try:
                for child in self.root.children(recursive=True):
                    self.known.setdefault(child.pid, child)
            except psutil.Error:
                pass
        alive = []
        for pid, proc in list(self.known.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
                    # Orphans re-parented to init are still ours: follow their children too.
                    if pid != self.pid:
                        for child in proc.children(recursive=True):
                            self.known.setdefault(child.pid, child)
                else:
                    del self.known[pid]
            except psutil.Error:
                del self.known[pid]
        return alive

    def sample(self) -> tuple[int, float]:
        """(summed RSS in bytes, summed CPU seconds) of the live tree."""
        rss = 0
        cpu = 0.0
        for proc in self.refresh():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    t = proc.cpu_times()
                    cpu += t.user + t.system
            except psutil.Error:
                continue
        return rss, cpu

    def signal_all(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in self.refresh():
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass

    def group_alive(self) -> bool:
        """Any live (non-zombie) process left in the group or among the known ones?"""
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return bool(self.refresh())
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == self.pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
            except (OSError, psutil.Error):
                continue
        return bool(self.refresh())

    def stop(self, grace_s: float, reap: Callable[[], None] = lambda: None) -> None:
        """SIGTERM everything, wait up to ``grace_s``, then SIGKILL what is left.

        ``reap`` collects the leader once it exits so that it stops counting as alive.
        """
        self.signal_all(signal.SIGTERM)
        # A stopped process (paused by the host guard) only sees SIGTERM once continued.
        self.signal_all(signal.SIGCONT)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            reap()
            if not self.group_alive():
                return
            time.sleep(0.05)
        self.signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reap()
            if not self.group_alive():
                return
            time.sleep(0.02)


def run(
    spec: RunSpec,
    *,
    on_start: Callable[[int, float], None] | None = None,
    on_sample: Callable[[], bool] | None = None,
) -> RunResult:
    """Run ``spec`` to completion.

    ``on_start(pid, started_at)`` is called right after the child exists.
    ``on_sample()`` is called on every sampling round; returning True asks for the run
    to be cancelled (kill requested, lease lost, ...).
    """
    read_fd, write_fd = os.pipe()
    env = dict(spec.env) if spec.env is not None else dict(os.environ)
    kwargs: dict = {}
    if spec.user:
        uid, gid, groups = _demote(spec.user)
        kwargs.update(user=uid, group=gid, extra_groups=groups)
        env.setdefault("HOME", pwd.getpwuid(uid).pw_dir)
        env["USER"] = env["LOGNAME"] = spec.user
    import subprocess

    try:
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    except (OSError, KeyError, ValueError) as exc:
        os.close(read_fd)
        os.close(write_fd)
        return RunResult(Outcome.FAILED, None, time.time(), 0.0, 0, 0.0, "", 0, error=f"cannot start: {exc}")
    started_wall = time.time()
    started = time.monotonic()
    os.close(write_fd)
    reader = _TailReader(read_fd, spec.tail_bytes)
    reader.start()
    if on_start is not None:
        on_start(proc.pid, started_wall)

    watcher = TreeWatcher(proc.pid)
    peak_rss = 0
    peak_cpu = 0.0
    outcome: str | None = None
    error = ""
    rusage_cpu = 0.0
    status: int | None = None

    def reap() -> None:
        nonlocal status, rusage_cpu
        if status is None:
            pid, raw_status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status = raw_status
                rusage_cpu = rusage.ru_utime + rusage.ru_stime
                watcher.leader_gone = True

    # Peak memory comes from sampling the tree, not from ru_maxrss: a child forked from a
    # large worker process briefly "has" the worker's pages before exec, which would
    # inflate the figure for every short script.
    # A pidfd wakes us the moment the child exits (no polling latency for short jobs);
    # the first sample comes after 5 ms so that /bin/true-sized jobs never pay for it.
    waiter = _ExitWaiter(proc.pid)
    wait_s = min(0.005, spec.sample_interval_s)
    try:
        while True:
            if waiter.wait(wait_s):
                reap()
                if status is not None:
                    break
            wait_s = spec.sample_interval_s
            rss, cpu = watcher.sample()
            peak_rss = max(peak_rss, rss)
            peak_cpu = max(peak_cpu, cpu)
            elapsed = time.monotonic() - started
            if spec.memory_limit_bytes and rss > spec.memory_limit_bytes:
                outcome = Outcome.KILLED_MEMORY
                error = f"memory limit exceeded: tree RSS {rss / MB:.0f} MB > {spec.memory_limit_bytes / MB:.0f} MB"
            elif spec.timeout_s and elapsed > spec.timeout_s:
                outcome = Outcome.TIMED_OUT
                error = f"timed out after {spec.timeout_s:g} s"
            elif on_sample is not None and on_sample():
                outcome = Outcome.CANCELLED
                error = "cancelled"
            if outcome is not None:
                watcher.stop(spec.kill_grace_s, reap)
                if status is None:
                    _, status, rusage = os.wait4(proc.pid, 0)
                    rusage_cpu = rusage.ru_utime + rusage.ru_stime
                    watcher.leader_gone = True
                break
    finally:
        waiter.close()
    duration = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    # The leader is gone; nothing it started may outlive the run.
    if watcher.group_alive():
        watcher.stop(min(spec.kill_grace_s, 2.0))
        if outcome is None:
            error = "stopped process(es) the script left running in the background"
    reader.join(timeout=5)
    exit_code = proc.returncode
    if outcome is None:
        outcome = Outcome.SUCCEEDED if exit_code == 0 else Outcome.FAILED
        if exit_code is not None and exit_code < 0:
            error = error or f"killed by signal {-exit_code}"
    return RunResult(
        outcome=outcome,
        exit_code=exit_code,
        started_at=started_wall,
        duration_s=duration,
        peak_rss_bytes=int(peak_rss),
        cpu_seconds=max(rusage_cpu, peak_cpu),
        output_tail=reader.text(),
        pid=proc.pid,
        error=error,
    )
