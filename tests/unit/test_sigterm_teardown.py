"""A test run that gets SIGTERM still tears its fixtures down (tests/conftest.py), so the servers and
clusters the tests started do not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_a_terminated_run_tears_down_its_session_fixtures(tmp_path: Path) -> None:
    started, torn_down = tmp_path / "started", tmp_path / "torn-down"
    (tmp_path / "test_waits.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time, pytest

            @pytest.fixture(scope="session")
            def resource():
                pathlib.Path({str(started)!r}).write_text("up")
                yield
                pathlib.Path({str(torn_down)!r}).write_text("down")

            def test_waits(resource):
                time.sleep(60)
            """
        )
    )
    conftest = (TESTS / "conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the test run never started its fixture"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert torn_down.read_text() == "down", output
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output
