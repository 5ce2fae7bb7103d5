#!/usr/bin/env python3
"""Benchmark: slurmlink's burst buffer plugin in a real single-node Slurm, against two baselines.

One fresh dev cluster (Debian's Slurm 22.05, ``slurmlink.slurm.devcluster``) runs the same workload in
three configurations, one after the other, switched by rewriting ``burst_buffer.lua`` only (the plugin
re-reads it on every call, so no reconfigure or restart skews a phase):

  (a) ``#DW`` jobs with a do-nothing ``burst_buffer.lua`` (every callback returns slurm.SUCCESS): what Slurm
      itself costs for a burst buffer job;
  (b) the same jobs without ``#DW`` lines (the no-op plugin stays installed but is never asked);
  (c) slurmlink: the rendered ``burst_buffer.lua`` talking to ``slurmlink slurm gateway``, which drives a
      Workflow per job through ``slurmlink serve`` (SQLite, test driver) for all seven states.

Each job is ``#!/bin/sh``, one ``#DW <State> action=complete`` line for each of the seven DWS states (a, c)
and ``/bin/true``. Per configuration: N jobs submitted ``--parallel`` at a time as the unprivileged job user;
sbatch throughput over the submission phase; submit-to-end latency p50/p99 per job; the time until all N
have ended; the same latency for a few jobs submitted alone into the idle cluster (which also warm it up);
and the slurmctld-side cost of a submission (``usec=`` of the submit RPC and of ``slurm_bb_job_process``,
both read from slurmctld.log at ``SlurmctldDebug=verbose`` with ``DebugFlags=BurstBuffer``). Finally
``slurm_bb_job_process`` of (a) and (c) is timed in-process with lupa and Debian's LuaSocket against the
live gateway, with a fresh Lua state per call as slurmctld does. Two more tables say where the time goes:
the medians of each life-cycle segment of a job (submit, stage-in, allocation, pre_run, end, teardown) from
slurmctld.log's own timestamps, and the CPU seconds slurmctld, ``slurmlink serve`` and the gateway used,
because on a small machine the plugin's helpers compete with sbatch and slurmctld for the same cores.

"End" of a job: squeue shows it COMPLETED (not COMPLETING or STAGE_OUT) with BurstBufferState ``complete``
(``(null)`` for jobs without ``#DW``), i.e. after stage-out and teardown. For (c) that also means its
Workflow ``bb<id>`` is gone: the gateway answers teardown only after it has seen the deletion, and the
benchmark checks with one list after the last job that none is left. One ``squeue`` every ``--poll`` seconds
(0.2) is the clock, so latencies carry up to one poll interval of resolution.

Run by hand, as root, on an otherwise idle machine (``--help`` for the options):

  python3 bench/slurm_bb.py [--jobs 200] [--parallel 4] [--rounds 1] [--keep]

With ``--rounds N`` the configurations run N times, alternating (a, c, a, c, ...), and each target is
judged on the median of the rounds' values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Self, cast

from procstat import child_pids, cpu_seconds
from slurmlink.cpu_priority import COLOCATED_SERVE_NICE
from slurmlink.serve_process import ServeError, ServeProcess
from slurmlink.slurm.devcluster import (
    BurstBufferSetup,
    DevCluster,
    DevClusterError,
    free_port_pair,
    gateway_healthy,
    placeholder_burst_buffer,
)
from slurmlink.slurm.plugin import burst_buffer_conf_text, render_burst_buffer_lua, slurm_api_version

STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
NAMESPACE = "slurm"
CONFIG_NAMES = {"a": "#DW + no-op Lua", "b": "no #DW", "c": "slurmlink"}


# Same in every phase, so switching phases changes burst_buffer.lua only: a changed slurm.conf or
# burst_buffer.conf would mean "scontrol reconfigure", after which the next burst buffer job waits 10+ s.
# verbose: DebugFlags=BurstBuffer lines (with the job_process usec) are logged at verbose level.
EXTRA_SLURM_CONF = ("SlurmctldDebug=verbose",)

FINAL_FAILED = frozenset(
    {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
LUA_CPATH_DIR = "/usr/lib/x86_64-linux-gnu/lua/5.1"
LUA_PATH_DIR = "/usr/share/lua/5.1"
_T0 = time.monotonic()


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what went wrong."""


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the result table."""
    print(f"[slurm_bb +{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as bench/workflow_api.py), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def free_port(taken: set[int]) -> int:
    """A free TCP port not in ``taken`` (the cluster's two ports are reserved by number only)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def job_script(with_dw: bool) -> str:
    """The workload's batch script; the #DW lines make the test driver complete every state at once."""
    lines = ["#!/bin/sh"]
    if with_dw:
        lines += [f"#DW {state} action=complete" for state in STATES]
    lines.append("/bin/true")
    return "\n".join(lines) + "\n"


def stop_process(proc: subprocess.Popen[Any] | None, name: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: serve and the gateway shut down cleanly on SIGTERM within a second."""
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping {name} (pid {proc.pid})")
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_until(probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``probe`` until true; a bounded wait turns a hung daemon into an error instead of a hang."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- slurmlink


class ApiServer(ServeProcess):
    """``slurmlink serve`` as a subprocess, as an operator runs it (embedded SQLite, test driver on)."""

    def __init__(self, root: Path, port: int, log_level: str) -> None:
        super().__init__(
            root / "api",
            port,
            log_path=root / "serve.log",
            # As the quick start runs it next to slurmctld (slurmlink.cpu_priority).
            extra_args=("--log-level", log_level, "--nice", str(COLOCATED_SERVE_NICE)),
        )

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig

    def start(self, timeout: float = 60.0) -> Self:
        try:
            return super().start(timeout)
        except ServeError as exc:
            raise BenchError(str(exc)) from None

    def issue_plugin_kubeconfig(self, out: Path) -> Path:
        """The plugin's credentials (role workload-manager), as 'slurmlink slurm install' would use."""
        try:
            return self.issue_kubeconfig("slurm-dws", "workload-manager", NAMESPACE, out=out)
        except ServeError as exc:
            raise BenchError(str(exc)) from None

    def workflow_names(self) -> list[str]:
        """The Workflows that exist now, with one ``slurmlink get`` (cheap next to a watch of all events)."""
        argv = [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "get",
            "workflows",
            "-n",
            NAMESPACE,
            "-o",
            "name",
            "--kubeconfig",
            str(self.admin_kubeconfig),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise BenchError(f"slurmlink get workflows failed: {result.stderr.strip()}")
        return [line.rsplit("/", 1)[-1] for line in result.stdout.split() if line.strip()]


class GatewayProcess:
    """``slurmlink slurm gateway`` as a subprocess, on its own socket, for the rendered burst_buffer.lua."""

    def __init__(self, root: Path, kubeconfig: Path, slurm_conf: Path, log_level: str) -> None:
        self.socket_path = root / "gw.sock"
        self.kubeconfig = kubeconfig
        self.slurm_conf = slurm_conf
        self.log_level = log_level
        self.log_path = root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "slurm",
            "gateway",
            "--kubeconfig",
            str(self.kubeconfig),
            "--socket",
            str(self.socket_path),
            "--slurm-conf",
            str(self.slurm_conf),
            "--log-level",
            self.log_level,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SLURM_CONF": str(self.slurm_conf)}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"the gateway exited with {self.proc.returncode}; see {self.log_path}")
            return gateway_healthy(self.socket_path)

        # healthz answers 200 once the gateway's informers have listed (it has synced with the API).
        wait_until(healthy, timeout, f"the gateway on {self.socket_path} (log: {self.log_path})")

    def stop(self) -> None:
        stop_process(self.proc, "slurmlink slurm gateway")


# ------------------------------------------------------------------------------------------------- Slurm


@dataclass
class JobState:
    """A job's last squeue state, kept to say what a job that never ended was doing."""

    state: str
    bb_state: str


class JobPoller(threading.Thread):
    """One ``squeue -t all`` per interval: records when each job was first seen ended (or failed).

    A single cheap RPC per interval for all jobs, rather than ``scontrol show job`` per job, so that
    watching 200 jobs adds the same small load to every configuration.
    """

    def __init__(self, cluster: DevCluster, interval: float) -> None:
        super().__init__(name="squeue-poller", daemon=True)
        self.cluster = cluster
        self.interval = interval
        self.ended: dict[int, float] = {}
        self.failed: dict[int, str] = {}
        self.states: dict[int, JobState] = {}
        self.polls = 0
        self._lock = threading.Lock()
        # Not "_stop": threading.Thread has a method of that name that join() relies on.
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                result = self.cluster.run_slurm(
                    ["squeue", "-h", "-t", "all", "-O", "JobID:16,State:24,BurstBufferState:24"], timeout=10
                )
            except subprocess.TimeoutExpired:
                result = None
            if result is not None and result.returncode == 0:
                self._record(result.stdout, started)
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _record(self, text: str, when: float) -> None:
        """``when`` is the poll's start: the job had ended by then or during the call."""
        with self._lock:
            self.polls += 1
            for line in text.splitlines():
                words = line.split()
                if len(words) < 2 or not words[0].isdigit():
                    continue
                job_id, state = int(words[0]), words[1]
                bb_state = words[2] if len(words) > 2 else ""
                self.states[job_id] = JobState(state, bb_state)
                if job_id in self.ended or job_id in self.failed:
                    continue
                # COMPLETED without the COMPLETING/STAGE_OUT flags (squeue shows those instead), and the
                # burst buffer torn down; "(null)": a job without #DW never had one.
                if state == "COMPLETED" and bb_state in ("complete", "(null)", ""):
                    self.ended[job_id] = when
                elif state in FINAL_FAILED and bb_state in ("complete", "(null)", ""):
                    self.failed[job_id] = f"{state} (BurstBufferState {bb_state})"

    def done(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self.ended or job_id in self.failed

    def end_of(self, job_id: int) -> float | None:
        with self._lock:
            return self.ended.get(job_id)

    def failure_of(self, job_id: int) -> str | None:
        with self._lock:
            return self.failed.get(job_id)

    def state_of(self, job_id: int) -> JobState | None:
        with self._lock:
            return self.states.get(job_id)

    def unfinished(self) -> list[int]:
        """Jobs squeue listed whose end has not been seen: the queue is empty when there are none."""
        with self._lock:
            return sorted(set(self.states) - set(self.ended) - set(self.failed))

    def stop(self) -> None:
        self._halt.set()


def sbatch(cluster: DevCluster, script: Path, name: str) -> int:
    """Submit ``script`` as the job user (root may not use burst buffers); returns the job id."""
    result = cluster.run_as_job_user(
        ["sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null", str(script)],
        cwd=str(cluster.jobs_dir),
        timeout=120,
    )
    if result.returncode != 0:
        raise BenchError(f"sbatch {script} failed: {(result.stderr or result.stdout).strip()}")
    return int(result.stdout.strip().split(";")[0])


#: Job life-cycle events in slurmctld.log (``DebugFlags=BurstBuffer`` at verbose for the bb ones).
EVENT_RES: dict[str, re.Pattern[str]] = {
    "submit": re.compile(r"_slurm_rpc_submit_batch_job: JobId=(\d+) "),
    "stage-in": re.compile(r"Modify JobId=(\d+) burst buffer state from pending to staging-in"),
    "staged-in": re.compile(r"Modify JobId=(\d+) burst buffer state from staging-in to staged-in"),
    "allocated": re.compile(r"(?:sched: Allocate JobId=|_start_job: Started JobId=)(\d+) "),
    "running": re.compile(r"Modify JobId=(\d+) burst buffer state from pre-run to running"),
    "done": re.compile(r"_job_complete: JobId=(\d+) done"),
    "torn down": re.compile(r"Modify JobId=(\d+) burst buffer state from teardown to complete"),
}
#: Consecutive events of a job and what happens between them; a job without #DW has no bb events, so
#: its segments are the ones whose ends both exist (submit -> allocated -> done).
SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("submit", "stage-in", "submit -> stage-in starts (a scheduler pass)"),
    ("stage-in", "staged-in", "stage-in: setup + data_in"),
    ("staged-in", "allocated", "staged-in -> allocated (a scheduler pass)"),
    ("submit", "allocated", "submit -> allocated (no #DW)"),
    ("allocated", "running", "allocated -> running: paths + pre_run"),
    ("running", "done", "running -> script done"),
    ("allocated", "done", "allocated -> script done (no #DW)"),
    ("done", "torn down", "script done -> torn down: post_run + data_out + teardown"),
)


class SlurmctldLog:
    """Reads the part of slurmctld.log written during a phase, for the controller-side timings."""

    SUBMIT_RE = re.compile(r"_slurm_rpc_submit_batch_job: JobId=(\d+) \S+ usec=(\d+)")
    JOB_PROCESS_RE = re.compile(r"slurm_bb_job_process ran for usec=(\d+)")

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def read_from(self, start: int) -> str:
        with open(self.path, "rb") as handle:
            handle.seek(start)
            return handle.read().decode("utf-8", errors="replace")

    def timings(self, text: str, job_ids: set[int]) -> tuple[list[float], list[float]]:
        """(submit RPC ms of ``job_ids``, job_process ms) in a phase's part of the log.

        The job_process line names no job; only the measured jobs were submitted in that part.
        """
        submit = [int(m.group(2)) / 1000 for m in self.SUBMIT_RE.finditer(text) if int(m.group(1)) in job_ids]
        job_process = [int(m.group(1)) / 1000 for m in self.JOB_PROCESS_RE.finditer(text)]
        return submit, job_process

    @staticmethod
    def segments(text: str, job_ids: set[int]) -> dict[str, list[float]]:
        """Seconds per life-cycle segment (see SEGMENTS) of ``job_ids``: where a job's time goes.

        The log's millisecond timestamps come from slurmctld itself, so unlike the squeue clock they
        have no poll-interval resolution.
        """
        events: dict[int, dict[str, float]] = {}
        for line in text.splitlines():
            if not line.startswith("[") or len(line) < 25:
                continue
            for name, pattern in EVENT_RES.items():
                match = pattern.search(line)
                if match and int(match.group(1)) in job_ids:
                    try:
                        when = datetime.fromisoformat(line[1:24]).timestamp()
                    except ValueError:
                        break
                    events.setdefault(int(match.group(1)), {}).setdefault(name, when)
                    break
        out: dict[str, list[float]] = {}
        for first, second, label in SEGMENTS:
            for job in events.values():
                if first not in job or second not in job:
                    continue
                # "submit -> allocated" only where there is no stage-in between (jobs without #DW).
                if (first, second) in (("submit", "allocated"), ("allocated", "done")) and "stage-in" in job:
                    continue
                out.setdefault(label, []).append(job[second] - job[first])
        return out


# ------------------------------------------------------------------------------------------------ phases


@dataclass
class PhaseResult:
    """What one configuration measured; times in seconds unless the name says ms."""

    config: str
    jobs: int
    submit_seconds: float = 0.0
    sbatch_seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    e2e_seconds: float = 0.0
    solo_latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    submit_rpc_ms: list[float] = field(default_factory=list)
    job_process_ms: list[float] = field(default_factory=list)
    segments: dict[str, list[float]] = field(default_factory=dict)
    #: CPU seconds per process: (during the submission, from the first sbatch until all jobs ended).
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.jobs / self.submit_seconds if self.submit_seconds else float("nan")

    @property
    def e2e_rate(self) -> float:
        return self.jobs / self.e2e_seconds if self.e2e_seconds else float("nan")


@dataclass
class Phase:
    """One configuration: its plugin, its job script and, for (c), the API server to check Workflows on."""

    key: str
    burst_buffer: BurstBufferSetup
    script: Path
    api: ApiServer | None = None
    #: slurmlink's processes whose CPU time the phase reports, besides slurmctld's.
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)


class Runner:
    """Runs the phases on one cluster; holds what they share (poller, log reader, options)."""

    def __init__(self, cluster: DevCluster, poller: JobPoller, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.poller = poller
        self.args = args
        self.ctld_log = SlurmctldLog(cluster.slurmctld_log)
        self.stop = threading.Event()

    def _wait_jobs(self, phase: Phase, job_ids: Sequence[int], timeout: float, progress: bool) -> None:
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 10
        while True:
            if self.stop.is_set():
                raise KeyboardInterrupt
            waiting = [j for j in job_ids if not self.poller.done(j)]
            if not waiting:
                return
            now = time.monotonic()
            if now > deadline:
                states = {j: self.poller.state_of(j) for j in waiting[:10]}
                raise BenchError(f"({phase.key}) {len(waiting)} jobs not ended after {timeout:g} s: {states}")
            if progress and now >= next_report:
                log(f"({phase.key}) {len(job_ids) - len(waiting)}/{len(job_ids)} jobs ended")
                next_report = now + 10
            time.sleep(0.05)

    def wait_quiet(self, phase: Phase, timeout: float = 300) -> None:
        """Queue empty (every listed job ended), node idle, and for (c) no Workflow left."""

        def quiet() -> bool:
            if self.stop.is_set():
                raise KeyboardInterrupt
            if self.poller.unfinished():
                return False
            if (self.cluster.node_state() or "").rstrip("*~#!%$@^-") != "idle":
                return False
            return phase.api is None or not phase.api.workflow_names()

        wait_until(quiet, timeout, "an empty queue and an idle node", interval=0.2)

    def _solo(self, phase: Phase) -> list[float]:
        """Jobs submitted one at a time into the idle cluster: unloaded latency, and the warm-up.

        The first one is dropped: it pays for cold caches (the gateway's first connection to the API,
        the first fork of slurmscriptd after a plugin change).
        """
        samples = []
        for index in range(self.args.solo + 1):
            started = time.monotonic()
            job_id = sbatch(self.cluster, phase.script, f"bench-{phase.key}-solo")
            self._wait_jobs(phase, [job_id], 120, progress=False)
            failure = self.poller.failure_of(job_id)
            if failure:
                raise BenchError(f"({phase.key}) solo job {job_id} ended {failure}")
            end = self.poller.end_of(job_id)
            assert end is not None
            if index:
                samples.append(end - started)
        return samples

    def run(self, phase: Phase) -> PhaseResult:
        args = self.args
        log(f"({phase.key}) {CONFIG_NAMES[phase.key]}: installing its burst_buffer.lua")
        self.cluster.up(burst_buffer=phase.burst_buffer, wait_timeout=120, extra_lines=EXTRA_SLURM_CONF)
        self.wait_quiet(phase)
        result = PhaseResult(config=phase.key, jobs=args.jobs)
        result.solo_latencies = self._solo(phase)
        log(
            f"({phase.key}) unloaded submit->end latency, {args.solo} jobs: median "
            f"{statistics.median(result.solo_latencies):.2f} s"
        )
        self.wait_quiet(phase)
        log_start = self.ctld_log.offset()
        # On 2 cores the plugin's helpers compete with sbatch and slurmctld: their CPU time says how much.
        pids = {"slurmctld": self.cluster.status().pids.get("slurmctld")}
        for name, proc in phase.processes.items():
            pids[name] = proc.pid
            for child in child_pids(proc.pid):  # the gateway's worker process
                pids[f"{name} worker"] = child
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}

        submitted: list[tuple[int, float, float]] = []
        lock = threading.Lock()
        counter = iter(range(args.jobs))

        def worker() -> None:
            while not self.stop.is_set():
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.monotonic()
                job_id = sbatch(self.cluster, phase.script, f"bench-{phase.key}")
                returned = time.monotonic()
                with lock:
                    submitted.append((job_id, started, returned))

        # The load average tells whether something else was busy on the machine (it should be ~0 here).
        log(
            f"({phase.key}) submitting {args.jobs} jobs, {args.parallel} sbatch at a time "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        with ThreadPoolExecutor(args.parallel, thread_name_prefix="sbatch") as pool:
            futures = [pool.submit(worker) for _ in range(args.parallel)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                self.stop.set()
                raise
        first = min(s[1] for s in submitted)
        result.submit_seconds = max(s[2] for s in submitted) - first
        cpu_submitted = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result.sbatch_seconds = [s[2] - s[1] for s in submitted]
        log(
            f"({phase.key}) submitted in {result.submit_seconds:.2f} s "
            f"({result.throughput:.1f} jobs/s); waiting for all to end"
        )
        job_ids = [s[0] for s in submitted]
        self._wait_jobs(phase, job_ids, args.phase_timeout, progress=True)
        result.cpu = {
            name: (cpu_submitted[name] - cpu_start[name], cpu_seconds(pid) - cpu_start[name])
            for name, pid in pids.items()
        }
        ends: list[float] = []
        for job_id, started, _ in submitted:
            failure = self.poller.failure_of(job_id)
            if failure:
                result.failures.append(f"job {job_id}: {failure}")
                continue
            end = self.poller.end_of(job_id)
            assert end is not None
            ends.append(end)
            result.latencies.append(end - started)
        result.e2e_seconds = max(ends, default=first) - first
        if phase.api is not None:
            # Teardown returns to Slurm only after the gateway saw bb<id> deleted, so none may be left.
            left = sorted(set(phase.api.workflow_names()) & {f"bb{j}" for j in job_ids})
            result.failures += [f"workflow {name} still exists after its job ended" for name in left]
        text = self.ctld_log.read_from(log_start)
        result.submit_rpc_ms, result.job_process_ms = self.ctld_log.timings(text, set(job_ids))
        result.segments = self.ctld_log.segments(text, set(job_ids))
        log(
            f"({phase.key}) all {args.jobs} ended after {result.e2e_seconds:.1f} s; latency p50 "
            f"{pct(result.latencies, 50):.2f} s, p99 {pct(result.latencies, 99):.2f} s; "
            f"{len(result.failures)} failed"
        )
        self.wait_quiet(phase)
        return result


# ------------------------------------------------------------------------------- job_process in-process


def import_lua51() -> ModuleType:
    """lupa's Lua 5.1, loaded RTLD_GLOBAL so that Debian's LuaSocket (a C module) can link against it."""
    old = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_NOW)
    try:
        import lupa.lua51 as lua51
    finally:
        sys.setdlopenflags(old)
    return cast(ModuleType, lua51)


_LUA_PRELUDE = f"""
package.cpath = "{LUA_CPATH_DIR}/?.so;" .. package.cpath
package.path = "{LUA_PATH_DIR}/?.lua;" .. package.path
local function quiet() end
slurm = {{
    SUCCESS = 0, ERROR = -1, FAILURE = -1,
    log_info = quiet, log_error = quiet, log_verbose = quiet, log_debug = quiet,
}}
"""


@dataclass
class InProcessTiming:
    """``slurm_bb_job_process`` in ms: as slurmctld runs it (fresh state + load + call) and call only."""

    fresh_ms: list[float]
    call_ms: list[float]


def time_job_process(lua_source: str, script_path: Path, calls: int) -> InProcessTiming:
    """Time the Lua callback like slurmctld runs it: a new Lua state that loads the script, then the call.

    slurmctld reloads burst_buffer.lua for every call, so the fresh-state figure is the one that holds
    its job write lock; the call-only figure isolates the round trip to the gateway.
    """
    lua51 = import_lua51()
    script = str(script_path)

    def fresh_runtime() -> Any:
        runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
        runtime.execute(_LUA_PRELUDE)
        runtime.execute(lua_source)
        return runtime

    def check(result: Any) -> None:
        rc = result[0] if isinstance(result, tuple) else result
        if rc not in (None, 0):
            raise BenchError(f"slurm_bb_job_process returned {result!r}")

    fresh: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime = fresh_runtime()
        result = runtime.globals().slurm_bb_job_process(script)
        fresh.append((time.perf_counter() - started) * 1000)
        check(result)
    call_only: list[float] = []
    function = fresh_runtime().globals().slurm_bb_job_process
    for _ in range(calls):
        started = time.perf_counter()
        result = function(script)
        call_only.append((time.perf_counter() - started) * 1000)
        check(result)
    return InProcessTiming(fresh, call_only)


# ------------------------------------------------------------------------------------------------ report


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN → dash


def pair(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{fmt(pct(values, 50), digits)} / {fmt(pct(values, 99), digits)}"


def ratio(num: float, den: float) -> str:
    if num != num or den != den or not den:
        return "-"
    return f"{num / den:.2f}x"


def diff(values: Sequence[float], base: Sequence[float], p: float) -> str:
    if not values or not base:
        return "-"
    return f"{pct(values, p) - pct(base, p):+.2f} s"


#: A target: what it says, the value measured, and whether that value meets it.
Check = tuple[str, float, Callable[[float], bool]]


def report(
    rounds: Sequence[dict[str, PhaseResult]],
    inproc: dict[str, InProcessTiming],
    args: argparse.Namespace,
) -> bool:
    """Print each round's tables, then the targets; True when every target that could be checked passed.

    With several rounds a target is judged on the median of its rounds' values. The added latency
    under load, a difference of two p50s of about half a minute each, moves by several seconds with
    the moment Slurm's scheduler passes pick the jobs up; alternating rounds see both configurations
    in more than one such phase.
    """
    per_round: list[list[Check]] = []
    for number, results in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f"\n### Round {number} of {len(rounds)}")
        per_round.append(report_round(results, inproc if number == 1 else {}, args))
    print()
    ok = True
    for label, _, meets in per_round[0]:
        values = [value for checks in per_round for name, value, _ in checks if name == label]
        value = statistics.median(values)
        ok = ok and meets(value)
        each = f" (median of {', '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
        print(f"  {'PASS' if meets(value) else 'FAIL'}  {label}: {value:.3f}{each}")
    return ok


def report_round(
    results: dict[str, PhaseResult],
    inproc: dict[str, InProcessTiming],
    args: argparse.Namespace,
) -> list[Check]:
    """Print one round's tables (and its failed jobs); the round's values for the targets."""
    empty = PhaseResult(config="", jobs=0)
    a, b, c = (results.get(k, empty) for k in "abc")
    none = InProcessTiming([], [])
    ia, ic = inproc.get("a", none), inproc.get("c", none)

    def lat_diff(base: PhaseResult) -> str:
        return f"{diff(c.latencies, base.latencies, 50)} / {diff(c.latencies, base.latencies, 99)}"

    rows = [
        (
            f"sbatch throughput, {args.parallel} parallel (jobs/s)",
            *(fmt(r.throughput, 1) for r in (a, b, c)),
            ratio(c.throughput, a.throughput),
            ratio(c.throughput, b.throughput),
        ),
        (
            "sbatch call p50 / p99 (ms)",
            *(pair([s * 1000 for s in r.sbatch_seconds], 1) for r in (a, b, c)),
            "",
            "",
        ),
        (
            "submit->end latency p50 / p99 (s)",
            *(pair(r.latencies) for r in (a, b, c)),
            lat_diff(a),
            lat_diff(b),
        ),
        (
            f"unloaded submit->end, median of {args.solo} (s)",
            *(fmt(statistics.median(r.solo_latencies)) if r.solo_latencies else "-" for r in (a, b, c)),
            f"{statistics.median(c.solo_latencies) - statistics.median(a.solo_latencies):+.2f} s"
            if a.solo_latencies and c.solo_latencies
            else "-",
            f"{statistics.median(c.solo_latencies) - statistics.median(b.solo_latencies):+.2f} s"
            if b.solo_latencies and c.solo_latencies
            else "-",
        ),
        (
            f"all {args.jobs} ended after (s) [jobs/s]",
            *(f"{fmt(r.e2e_seconds, 1)} [{fmt(r.e2e_rate)}]" if r.jobs else "-" for r in (a, b, c)),
            ratio(c.e2e_rate, a.e2e_rate),
            ratio(c.e2e_rate, b.e2e_rate),
        ),
        (
            "slurmctld submit RPC p50 / p99 (ms)",
            *(pair(r.submit_rpc_ms) for r in (a, b, c)),
            "",
            "",
        ),
        (
            "slurmctld job_process p50 / p99 (ms)",
            pair(a.job_process_ms),
            "not called",
            pair(c.job_process_ms),
            "",
            "",
        ),
        (
            f"job_process in-process, fresh Lua state, n={args.lua_calls} (ms)",
            pair(ia.fresh_ms),
            "",
            pair(ic.fresh_ms),
            "",
            "",
        ),
        (
            "job_process in-process, call only (ms)",
            pair(ia.call_ms),
            "",
            pair(ic.call_ms),
            "",
            "",
        ),
        ("failed jobs", *(str(len(r.failures)) if r.jobs else "-" for r in (a, b, c)), "", ""),
    ]
    header = ("", "(a) #DW, no-op Lua", "(b) no #DW", "(c) slurmlink", "c/a (c-a)", "c/b (c-b)")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")

    print()
    print("Where a job's time goes (slurmctld.log timestamps), p50 / p99 in s:")
    print()
    print("| segment | (a) | (b) | (c) |")
    print("|---|---|---|---|")
    for _, _, label in SEGMENTS:
        cells = [pair(r.segments.get(label, []), 3) for r in (a, b, c)]
        if any(cell != "-" for cell in cells):
            print(f"| {label} | " + " | ".join(cells) + " |")

    print()
    print("CPU seconds used during the submission / until all jobs ended:")
    print()
    print("| process | (a) | (b) | (c) |")
    print("|---|---|---|---|")
    names = list(dict.fromkeys(name for r in (a, b, c) for name in r.cpu))
    for name in names:
        cells = [
            f"{fmt(r.cpu[name][0])} / {fmt(r.cpu[name][1], 1)}" if name in r.cpu else "-" for r in (a, b, c)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")

    checks: list[Check] = []
    if a.jobs and c.jobs:
        checks += [
            ("sbatch throughput c/a >= 0.80", c.throughput / a.throughput, lambda v: v >= 0.8),
            ("end-to-end rate c/a >= 0.80", c.e2e_rate / a.e2e_rate, lambda v: v >= 0.8),
            (
                "added latency p50 c-a <= 0.5 s",
                pct(c.latencies, 50) - pct(a.latencies, 50),
                lambda v: v <= 0.5,
            ),
        ]
    for label, samples in (("slurmctld", c.job_process_ms), ("in-process", ic.fresh_ms)):
        if samples:
            checks += [
                (f"job_process median <= 10 ms ({label})", pct(samples, 50), lambda v: v <= 10),
                (f"job_process p99 <= 50 ms ({label})", pct(samples, 99), lambda v: v <= 50),
            ]
    for r in (a, b, c):
        for failure in r.failures[:5]:
            print(f"  ({r.config}) {failure}")
    return checks


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per configuration (default 200)")
    parser.add_argument("--parallel", type=int, default=4, help="concurrent sbatch processes (default 4)")
    parser.add_argument(
        "--configs", default="a,b,c", help="which configurations to run, in this order (default a,b,c)"
    )
    parser.add_argument(
        "--solo", type=int, default=5, help="unloaded jobs per configuration, one at a time (default 5)"
    )
    parser.add_argument(
        "--lua-calls", type=int, default=500, help="in-process job_process calls per plugin (default 500)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the configurations this many times, alternating; targets take the median (default 1)",
    )
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between squeue polls (default 0.2)")
    parser.add_argument(
        "--phase-timeout", type=float, default=900, help="seconds all jobs of a phase may take (default 900)"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of slurmlink serve and the gateway (default warning)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dir (logs) under /var/tmp")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIG_NAMES for c in configs) or len(set(configs)) != len(configs):
        parser.error("--configs takes distinct letters out of a, b, c, e.g. a,b,c")
    args.configs = configs
    if min(args.jobs, args.parallel, args.solo, args.lua_calls, args.rounds) < 1 or args.poll <= 0:
        parser.error("--jobs, --parallel, --solo, --lua-calls, --rounds and --poll must be positive")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C, so the same finally blocks stop every daemon and purge the dirs.

    Later SIGTERMs and Ctrl-Cs are ignored: one arriving while those blocks run would cut them short
    and leave daemons running with their pid files already deleted.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def bench_root(keep: bool) -> Iterator[Path]:
    """A world-searchable dir under /var/tmp: the job user must reach slurm.conf and the munge socket."""
    root = Path(tempfile.mkdtemp(prefix="slurmlink-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> bool:
    if os.geteuid() != 0:
        raise BenchError("run as root: the dev cluster runs slurmctld/slurmd as root")
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(bench_root(args.keep))
        # Exits after cluster.down: slurmctld's last callbacks may still need the gateway.
        services = stack.enter_context(contextlib.ExitStack())
        ctld_port, slurmd_port = free_port_pair()
        cluster = DevCluster(
            root / "cluster",
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            cluster_name="slurmlink-bench",
            log=lambda message: log(f"dev-cluster: {message}"),
        )
        stack.callback(cluster.down)  # stops the daemons; the dir goes with bench_root
        log(f"state dir {root}; Slurm ports {ctld_port}/{slurmd_port}")
        # The dev cluster's do-nothing plugin, without a pool: with one the (a) jobs would ask for capacity
        # and start on a different scheduler path than slurmlink's jobs, which ask for none.
        noop = BurstBufferSetup(
            lua_source=placeholder_burst_buffer().lua_source, conf_text=burst_buffer_conf_text()
        )
        cluster.up(burst_buffer=noop, wait_timeout=120, extra_lines=EXTRA_SLURM_CONF)
        dw_script = cluster.jobs_dir / "dw.sh"
        plain_script = cluster.jobs_dir / "plain.sh"
        for path, with_dw in ((dw_script, True), (plain_script, False)):
            path.write_text(job_script(with_dw))
            path.chmod(0o644)
        # A script where slurmctld keeps them (…/job.<id>/script): the Lua takes the job id from the path.
        jp_script = root / "jp" / "hash.0" / "job.900000" / "script"
        jp_script.parent.mkdir(parents=True)
        jp_script.write_text(job_script(True))

        poller = JobPoller(cluster, args.poll)
        poller.start()
        stack.callback(poller.stop)
        runner = Runner(cluster, poller, args)
        stack.callback(runner.stop.set)

        phases: dict[str, Phase] = {}
        rounds: list[dict[str, PhaseResult]] = []
        inproc: dict[str, InProcessTiming] = {}
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                log(f"round {number} of {args.rounds}")
            results: dict[str, PhaseResult] = {}
            for key in args.configs:
                if key not in phases:
                    phases[key] = (
                        start_slurmlink(services, root, cluster, dw_script, args)
                        if key == "c"
                        else Phase(key, noop, dw_script if key == "a" else plain_script)
                    )
                phase = phases[key]
                results[key] = runner.run(phase)
                if key in ("a", "c") and key not in inproc:
                    log(f"({key}) timing slurm_bb_job_process in-process, {args.lua_calls} calls")
                    try:
                        inproc[key] = time_job_process(
                            phase.burst_buffer.lua_source, jp_script, args.lua_calls
                        )
                    except ImportError as exc:
                        log(f"skipping the in-process timing: {exc} (pip install lupa)")
            rounds.append(results)
        return report(rounds, inproc, args)


def start_slurmlink(
    stack: contextlib.ExitStack, root: Path, cluster: DevCluster, script: Path, args: argparse.Namespace
) -> Phase:
    """serve, the plugin's kubeconfig and the gateway; each registered for cleanup."""
    api = ApiServer(root, free_port({cluster.ctld_port, cluster.slurmd_port}), args.log_level)
    stack.callback(api.stop)
    log(f"starting slurmlink serve on 127.0.0.1:{api.port}")
    api.start()
    kubeconfig = api.issue_plugin_kubeconfig(root / "wlm.kubeconfig")
    gateway = GatewayProcess(root, kubeconfig, cluster.slurm_conf, args.log_level)
    stack.callback(gateway.stop)
    log("starting slurmlink slurm gateway")
    gateway.start()
    version = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True, check=False).stdout
    lua = render_burst_buffer_lua(gateway.socket_path, slurm_api=slurm_api_version(version))
    processes: dict[str, subprocess.Popen[Any]] = {}
    for name, proc in (("slurmlink serve", api.proc), ("slurmlink gateway", gateway.proc)):
        if proc is not None:
            processes[name] = proc
    return Phase(
        "c", BurstBufferSetup(lua_source=lua, conf_text=burst_buffer_conf_text()), script, api, processes
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        ok = run(args)
    except KeyboardInterrupt:
        log("interrupted; everything was stopped")
        return 130
    except (BenchError, DevClusterError) as exc:
        log(f"error: {exc}")
        return 1
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
