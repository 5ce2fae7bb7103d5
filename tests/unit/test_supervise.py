"""Process supervision: a process is never taken for dead (or for someone else) while it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurmlink import supervise


def test_cmdline_of_a_process_that_has_just_exec_d_is_its_own() -> None:
    # Right after exec the kernel shows an empty cmdline for a moment; most of these hit that window.
    for _ in range(20):
        proc = subprocess.Popen(["sleep", "5"], start_new_session=True)
        try:
            assert supervise.cmdline(proc.pid) == ["sleep", "5"]
        finally:
            proc.kill()
            proc.wait()


def test_a_spawned_daemon_is_alive_while_it_rewrites_its_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    pid = supervise.spawn_detached(["sleep", "30"], tmp_path / "log", env={}, cwd=tmp_path)
    try:
        supervise.write_pid(pid_file, pid)
        assert supervise.running_pid(pid_file, lambda argv: argv[:1] == ["sleep"]) == pid
        pid_file.write_text("")  # as munged has it between unlinking and writing its pid file
        supervise.died_check(pid, "sleep", lambda: "")()  # does not raise
    finally:
        supervise.stop_pid(pid, "sleep", 5, lambda _: None)
    assert not supervise.process_alive(pid)


def test_died_check_reports_the_exit_status_and_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    argv = [sys.executable, "-c", "print('no such option: --bogus'); raise SystemExit(3)"]
    pid = supervise.spawn_detached(argv, log, env={}, cwd=tmp_path)
    check = supervise.died_check(pid, "daemon", lambda: supervise.log_tail([log]))
    with pytest.raises(supervise.SupervisionError, match=r"(?s)status 3.*no such option: --bogus"):
        supervise.wait_until(lambda: False, 10, "nothing", check)


def test_running_pid_ignores_a_pid_reused_by_another_program(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "5"], start_new_session=True)
    try:
        pid_file = tmp_path / "daemon.pid"
        pid_file.write_text(f"{proc.pid}\n")
        assert supervise.running_pid(pid_file, lambda argv: argv[:1] == ["munged"]) is None
    finally:
        proc.kill()
        proc.wait()
