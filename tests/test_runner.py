"""The script runner, on real child processes."""

import os
import time

import psutil

from jobs.runner import MB, Outcome, RunSpec, run
from tests.conftest import pids_alive


def test_it_records_a_failure_with_exit_code_and_output_tail():
    result = run(RunSpec(["bash", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]))
    assert result.outcome == Outcome.FAILED
    assert result.exit_code == 3
    assert "to-stdout" in result.output_tail and "to-stderr" in result.output_tail


def test_the_output_tail_is_bounded():
    result = run(RunSpec(["bash", "-c", "for i in $(seq 1 20000); do echo line-$i; done"], tail_bytes=1024))
    assert result.outcome == Outcome.SUCCEEDED
    assert len(result.output_tail) < 1100
    assert result.output_tail.rstrip().endswith("line-20000")
    assert result.output_tail.startswith("[...]")


def test_timeout_kills_the_whole_tree_including_a_detached_grandchild(tmp_path):
    pidfile = tmp_path / "pids"
    script = (
        f"sleep 300 & echo $! >> {pidfile}; "
        f"setsid bash -c 'echo $$ >> {pidfile}; sleep 300' & "
        f"sleep 0.3; echo $$ >> {pidfile}; sleep 300"
    )
    started = time.monotonic()
    result = run(RunSpec(["bash", "-c", script], timeout_s=1.0, kill_grace_s=1.0, sample_interval_s=0.05))
    assert result.outcome == Outcome.TIMED_OUT
    assert time.monotonic() - started < 6
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 3
    time.sleep(0.2)
    assert pids_alive(pids) == []


def test_a_script_that_ignores_sigterm_is_killed_after_the_grace():
    result = run(RunSpec(["bash", "-c", "trap '' TERM; sleep 300 & wait"], timeout_s=0.5, kill_grace_s=0.5))
    assert result.outcome == Outcome.TIMED_OUT
    assert result.duration_s < 5


def test_memory_hog_is_killed_at_its_limit():
    hog = "a = bytearray(400 * 1024 * 1024); a[::4096] = b'x' * len(a[::4096]); import time; time.sleep(30)"
    result = run(RunSpec(["python3", "-c", hog], memory_limit_bytes=150 * MB, sample_interval_s=0.05))
    assert result.outcome == Outcome.KILLED_MEMORY
    assert result.peak_rss_bytes > 150 * MB
    assert "memory limit exceeded" in result.error
    assert result.duration_s < 10


def test_memory_of_the_whole_tree_is_summed():
    child = "a = bytearray(80 * 1024 * 1024); a[::4096] = b'x' * len(a[::4096]); import time; time.sleep(1.5)"
    script = f'python3 -c "{child}" & python3 -c "{child}" & wait'
    result = run(RunSpec(["bash", "-c", script], sample_interval_s=0.05))
    assert result.outcome == Outcome.SUCCEEDED
    assert result.peak_memory_mb > 160


def test_cpu_seconds_are_measured():
    result = run(
        RunSpec(["python3", "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass"])
    )
    assert 0.4 < result.cpu_seconds < 2.0


def test_background_leftovers_are_stopped_when_the_script_exits(tmp_path):
    pidfile = tmp_path / "pid"
    result = run(RunSpec(["bash", "-c", f"sleep 300 & echo $! > {pidfile}; echo done"]))
    assert result.outcome == Outcome.SUCCEEDED
    time.sleep(0.1)
    assert pids_alive([int(pidfile.read_text())]) == []
    assert "left running" in result.error


def test_cancel_request_stops_the_run():
    calls = {"n": 0}

    def on_sample() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    result = run(RunSpec(["sleep", "30"], kill_grace_s=0.5), on_sample=on_sample)
    assert result.outcome == Outcome.CANCELLED
    assert result.duration_s < 5


def test_a_missing_program_is_a_failure_not_a_crash():
    result = run(RunSpec(["/nonexistent/program"]))
    assert result.outcome == Outcome.FAILED
    assert "cannot start" in result.error


def test_it_runs_as_another_user():
    result = run(RunSpec(["id", "-un"], user="nobody", cwd="/"))
    if os.geteuid() != 0:
        assert result.outcome == Outcome.FAILED
    else:
        assert result.output_tail.strip() == "nobody"


def test_no_process_is_left_from_this_module():
    # The session's test Redis server may be a child of pytest; nothing else may be.
    mine = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and "redis-server" not in p.name()
    ]
    assert mine == []
