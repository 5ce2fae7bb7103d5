#!/usr/bin/env python3
"""Benchmark: real burst buffers (``#DW jobdw``) on the multi-node quick start, against baselines.

One fresh quick start (``slurmlink quickstart up``: API server, Slurm with slurmlink's burst_buffer.lua and
gateway, a storage agent in each storage node on a sparse loop file, a compute agent in each compute node)
serves three measurements, one after the other, in the same run:

1. **Allocation latency** of ``--alloc-jobs`` (100) ``jobdw`` jobs submitted at once
   (``#DW jobdw type=xfs capacity=64MiB name=bb pool=bench``, on a StoragePool ``bench`` of 64 MiB
   granules the benchmark creates over the storage nodes). Per job, read from a watch of its Workflow
   with the admin kubeconfig: from the moment the Workflow entered ``Setup`` (``status.desiredStateChange``,
   written by the controller as soon as the gateway asked for Setup, before any placement) to Setup's
   completion (``status.readyChange``: every StorageAllocation of the job Ready, i.e. an XFS made on a
   loop device of a storage node). Also submission to buffer ready, and how many Workflows were in Setup
   at once at the peak (Slurm decides how many jobs it stages in together).
2. **End to end**: ``--e2e-jobs`` (200) of the same jobs with slurmlink's plugin against the same jobs with
   a do-nothing ``burst_buffer.lua`` (every callback returns success; its ``slurm_bb_pools`` lists the same
   pool names, so Slurm parses and accounts ``capacity=``/``pool=`` the same way), swapped in by rewriting
   the lua in place as ``bench/slurm_bb.py`` does (the plugin re-reads it on every call; Slurm learns the
   swapped pool list at its next 30 s poll, which the benchmark waits for). ``--e2e-rounds`` alternates the
   two. Throughput = jobs / (first sbatch to the last job ended, torn down included); latency = submit to
   end per job (an ``squeue`` poll every 0.2 s is the clock, from ``bench/slurm_bb.py``).
3. **Write throughput** inside a job on an ``xfs`` buffer (``--dd-capacity``, pool ``xfs``): ``dd
   if=/dev/zero of=$DW_JOB_bb/f bs=1M count=N oflag=direct``, against the same ``dd`` on an XFS made
   directly on a loop file of the same size (preallocated like the driver's, ``losetup --direct-io=on``)
   on the same host file system. The job waits on flag files so the two alternate ``--dd-rounds`` times.
   The same for a ``gluster`` buffer (pool ``gluster``: one volume over the storage nodes, FUSE-mounted),
   whose writes end with ``conv=fsync`` (no O_DIRECT through glusterfs's FUSE client), as do its baseline's.

4. **Staging end to end**: ``--e2e-jobs`` jobs with ``#DW copy_in`` of a directory (``--stage-files``
   files of ``--stage-file-size``, owned by the job user) into an ``xfs`` buffer and ``#DW copy_out`` of
   it back (DataMovements run by the storage agents as the job's user, checksums verified), against the
   same jobs with the same buffer that copy the same data in and out themselves (``cp -a`` in the job
   script). Throughput and submit-to-end latency as in (2); ``--stage-rounds`` alternates the two.

Every job of (1), (2) and (4) asks for ``--time-limit`` minutes (5): Slurm starts the stage-in of a job
without a time limit only once its main scheduler reaches it with nodes free (see docs/burst-buffers.md),
which no real site's jobs wait for.

Everything runs on one machine, so the numbers are only comparable within one run; the load average at
the start of each phase is printed with it. Cleanup on exit, Ctrl-C and SIGTERM: jobs cancelled, the
baseline XFS unmounted and its loop device detached, the quick start taken down (``--purge``).

Run by hand, as root:

  python3 bench/burst_buffers.py [--alloc-jobs 100] [--e2e-jobs 200] [--e2e-rounds 1] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Run as a script, bench/ is on sys.path: the Slurm benchmark's helpers are shared, not copied.
from procstat import cpu_seconds
from slurm_bb import (
    BenchError,
    JobPoller,
    _raise_interrupt,
    fmt,
    free_port,
    pct,
    ratio,
    sbatch,
    wait_until,
)
from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.client.http import ssl_context
from slurmlink.resources.sizes import parse_size
from slurmlink.slurm.devcluster import DevCluster, free_port_pair, placeholder_burst_buffer

NS = "slurm"
SL = "/apis/slurmlink.io/v1"
DWS = "/apis/dataworkflowservices.github.io/v1alpha7"
BENCH_POOL = "bench"
#: Each pool of the do-nothing lua: room for every job, and far above any real pool here.
NOOP_POOL_BYTES = 1 << 50
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[burst_buffers +{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_micro(text: str) -> float:
    """A MicroTime (``2026-12-04T05:09:55.123456Z``) as a Unix timestamp."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


# ------------------------------------------------------------------------------------------- quick start


class QuickStart:
    """``slurmlink quickstart up`` on a fresh state dir and free ports; ``down --purge`` on exit."""

    def __init__(self, directory: Path, computes: int, storages: int, storage_size: str) -> None:
        self.dir = directory
        ctld, slurmd = free_port_pair()
        self.listen = f"127.0.0.1:{free_port({ctld, slurmd})}"
        self.up_args = [
            "--state-dir", str(directory), "--listen", self.listen,
            "--ctld-port", str(ctld), "--slurmd-port", str(slurmd),
            "--compute-nodes", str(computes), "--storage-nodes", str(storages),
            "--storage-size", storage_size,
        ]  # fmt: skip
        self.cluster: DevCluster | None = None

    def _cli(self, *args: str, timeout: float) -> None:
        argv = [sys.executable, "-m", "slurmlink.cli.main", "quickstart", *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.terminate()  # up undoes what it started when stopped; down below does the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        if proc.returncode != 0:
            raise BenchError(f"quickstart {args[0]} failed ({proc.returncode}): {err.strip()[-2000:]}")

    def up(self, timeout: float) -> DevCluster:
        log(f"quickstart up in {self.dir} ({' '.join(self.up_args[2:])})")
        self._cli("up", *self.up_args, timeout=timeout)
        self.cluster = DevCluster.from_state_dir(self.dir / "cluster")
        return self.cluster

    def down(self, purge: bool) -> None:
        log("quickstart down" + (" --purge" if purge else ""))
        try:
            self._cli("down", "--state-dir", str(self.dir), *(["--purge"] if purge else []), timeout=300)
        except BenchError as exc:
            log(f"warning: {exc}")

    @property
    def admin(self) -> Path:
        return self.dir / "server" / "admin.kubeconfig"

    def client(self, timeout: float | None = 30) -> httpx.Client:
        creds = load_kubeconfig(self.admin)
        return httpx.Client(base_url=creds.server, verify=ssl_context(creds), timeout=timeout)

    def pids(self) -> dict[str, int]:
        """The quick start's own daemons (server, agents, gateway), for CPU accounting."""
        out: dict[str, int] = {}
        for path in sorted((self.dir / "run").glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                out[path.stem] = int(path.read_text().split()[0])
        return out


def slurm_pool_total(cluster: DevCluster, pool: str) -> int:
    """TotalSpace of ``pool`` in ``scontrol show burst`` (0 until Slurm's first pool poll)."""
    shown = cluster.run_slurm(["scontrol", "show", "burst"], timeout=10).stdout
    match = re.search(rf"PoolName\[\d+\]={pool} .*?TotalSpace=(\d+)(\w*)", shown)
    if not match:
        return 0
    units = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50}
    return int(match.group(1)) * units.get(match.group(2), 1)


# ------------------------------------------------------------------------------------- Workflow watch


@dataclass
class SetupTimes:
    submitted: float | None = None  # wall clock of the sbatch call
    setup_start: float | None = None  # status.desiredStateChange while state == Setup
    setup_ready: float | None = None  # status.readyChange once Setup is ready


class WorkflowWatch(threading.Thread):
    """One watch of the namespace's Workflows: when each entered Setup and when Setup was ready."""

    def __init__(self, qs: QuickStart) -> None:
        super().__init__(name="workflow-watch", daemon=True)
        self.qs = qs
        self.times: dict[str, SetupTimes] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.synced = threading.Event()
        self.error: str | None = None
        self._api: httpx.Client | None = None

    def run(self) -> None:
        resource_version = ""
        path = f"{DWS}/namespaces/{NS}/workflows"
        while not self.halt.is_set():
            try:
                with self.qs.client(timeout=None) as api:
                    self._api = api
                    if self.halt.is_set():
                        return
                    if not resource_version:
                        listed = api.get(path).json()
                        resource_version = listed["metadata"]["resourceVersion"]
                        for item in listed.get("items") or []:
                            self._record(item)
                    self.synced.set()
                    params = {"watch": "true", "resourceVersion": resource_version}
                    with api.stream("GET", path, params=params) as response:
                        if response.status_code != 200:
                            raise BenchError(f"watch answered {response.status_code}")
                        for line in response.iter_lines():
                            if self.halt.is_set():
                                return
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            obj = event.get("object") or {}
                            if event.get("type") == "ERROR":
                                resource_version = ""  # too old: list again
                                break
                            resource_version = obj.get("metadata", {}).get(
                                "resourceVersion", resource_version
                            )
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                self._record(obj)
            except Exception as exc:  # reconnect; the resourceVersion resumes where it was
                if self.halt.is_set():
                    return
                self.error = repr(exc)
                time.sleep(0.5)

    def _record(self, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        status = obj.get("status") or {}
        if status.get("state") != "Setup":
            return
        with self.lock:
            entry = self.times.setdefault(name, SetupTimes())
            if status.get("desiredStateChange") and entry.setup_start is None:
                entry.setup_start = parse_micro(status["desiredStateChange"])
            if status.get("ready") and status.get("readyChange") and entry.setup_ready is None:
                entry.setup_ready = parse_micro(status["readyChange"])

    def get(self, name: str) -> SetupTimes | None:
        with self.lock:
            return self.times.get(name)

    def stop(self) -> None:
        """Stop watching now: the open stream is closed, so the server sends it nothing more."""
        self.halt.set()
        api = self._api
        if api is not None:
            api.close()
        self.join(10)


# ------------------------------------------------------------------------------------------------ jobs


@dataclass
class Batch:
    """What one batch of jobs measured; wall-clock times (time.time()) and seconds."""

    label: str
    jobs: list[tuple[int, float, float]] = field(default_factory=list)  # (id, submitted wall, mono)
    latencies: list[float] = field(default_factory=list)
    e2e_seconds: float = float("nan")
    submit_seconds: float = float("nan")
    failures: list[str] = field(default_factory=list)
    load: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    #: Slurm scheduling passes that started this batch's jobs: (main scheduler, backfill).
    passes: tuple[int, int] = (0, 0)
    #: Seconds from the first sbatch until Slurm started the first of the batch's jobs.
    first_start: float = float("nan")
    #: The API server's HTTP traffic during the batch: ("requests" | "watch events" | "watch writes",
    #: verb or "", resource) -> count.
    traffic: dict[tuple[str, str, str], float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.jobs) / self.e2e_seconds if self.e2e_seconds == self.e2e_seconds else float("nan")


class Bench:
    def __init__(self, qs: QuickStart, cluster: DevCluster, poller: JobPoller, args: argparse.Namespace):
        self.qs = qs
        self.cluster = cluster
        self.poller = poller
        self.args = args
        self.lua_path = cluster.etc_dir / "burst_buffer.lua"
        self.real_lua = self.lua_path.read_text()

    # ---- jobs

    def script(self, name: str, body: str) -> Path:
        path = self.cluster.jobs_dir / name
        limit = f"#SBATCH --time={self.args.time_limit}\n" if self.args.time_limit else ""
        path.write_text("#!/bin/sh\n" + limit + body.strip() + "\n")
        path.chmod(0o755)
        return path

    def submit(self, script: Path, count: int, label: str) -> Batch:
        batch = Batch(label, load=os.getloadavg()[0])
        lock = threading.Lock()
        counter = iter(range(count))

        def worker() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                wall, mono = time.time(), time.monotonic()
                job_id = sbatch(self.cluster, script, f"bb-{label}")
                with lock:
                    batch.jobs.append((job_id, wall, mono))

        first = time.monotonic()
        with ThreadPoolExecutor(self.args.parallel, thread_name_prefix="sbatch") as pool:
            for future in [pool.submit(worker) for _ in range(self.args.parallel)]:
                future.result()
        batch.submit_seconds = time.monotonic() - first
        return batch

    def wait(self, batch: Batch, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ids = [j for j, _, _ in batch.jobs]
        next_report = time.monotonic() + 15
        while waiting := [j for j in ids if not self.poller.done(j)]:
            if time.monotonic() > deadline:
                states = {j: self.poller.state_of(j) for j in waiting[:5]}
                raise BenchError(
                    f"({batch.label}) {len(waiting)} jobs not ended after {timeout:g} s: {states}"
                )
            if time.monotonic() >= next_report:
                log(f"({batch.label}) {len(ids) - len(waiting)}/{len(ids)} jobs ended")
                next_report = time.monotonic() + 15
            time.sleep(0.1)
        first = min(m for _, _, m in batch.jobs)
        ends = []
        for job_id, _, mono in batch.jobs:
            failure = self.poller.failure_of(job_id)
            if failure:
                batch.failures.append(f"job {job_id}: {failure}")
                continue
            end = self.poller.end_of(job_id)
            assert end is not None
            ends.append(end)
            batch.latencies.append(end - mono)
        batch.e2e_seconds = max(ends, default=first) - first

    def wait_quiet(self, timeout: float = 300) -> None:
        """Queue empty and every buffer gone (no StorageAllocation left)."""
        with self.qs.client() as api:

            def quiet() -> bool:
                if self.poller.unfinished():
                    return False
                items = api.get(f"{SL}/namespaces/{NS}/storageallocations").json().get("items") or []
                return not items

            wait_until(quiet, timeout, "an empty queue and no StorageAllocation left", interval=0.5)

    def traffic_now(self) -> dict[tuple[str, str, str], float]:
        """The API server's counters of HTTP requests and watch events (its ``/metrics``)."""
        with self.qs.client() as api:
            text = api.get("/metrics").text
        out: dict[tuple[str, str, str], float] = {}
        names = {
            "slurmlink_api_requests": "requests",
            "slurmlink_api_watch_events": "watch events",
            "slurmlink_api_watch_writes": "watch writes",
        }
        for family in text_string_to_metric_families(text):
            what = names.get(family.name)
            if what is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (what, sample.labels.get("verb", ""), sample.labels.get("resource", ""))
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def cpu_now(self) -> dict[str, float]:
        pids = self.qs.pids()
        daemons = self.cluster.status().pids
        for name in ("slurmctld", "gateway"):
            if daemons.get(name):
                pids[name] = daemons[name]
        out = {}
        for name, pid in pids.items():
            total = cpu_seconds(pid)
            for child in _descendants(pid):  # the gateway's worker, the agents' helpers still running
                total += cpu_seconds(child)
            out[name] = total
        return out

    # ---- the pool and the plugin

    def create_bench_pool(self) -> None:
        nodes = [node.name for node in self.cluster.storage_nodes]
        body = {
            "apiVersion": "slurmlink.io/v1",
            "kind": "StoragePool",
            "metadata": {"name": BENCH_POOL},
            "spec": {"fileSystemTypes": ["xfs"], "nodes": nodes, "granularity": self.args.alloc_capacity},
        }
        with self.qs.client() as api:
            response = api.post(f"{SL}/storagepools", json=body)
            if response.status_code not in (200, 201, 409):
                raise BenchError(f"creating StoragePool {BENCH_POOL}: {response.status_code} {response.text}")

            def counted() -> bool:
                status = api.get(f"{SL}/storagepools/{BENCH_POOL}").json().get("status") or {}
                return int(status.get("totalGranules") or 0) > 0

            wait_until(counted, 120, f"StoragePool {BENCH_POOL} to count its granules", interval=0.5)
            status = api.get(f"{SL}/storagepools/{BENCH_POOL}").json()["status"]
        log(
            f"StoragePool {BENCH_POOL}: {status['totalGranules']} granules of {self.args.alloc_capacity} "
            f"over {', '.join(nodes)}"
        )

    def wait_slurm_pools(self, noop: bool) -> None:
        """Until Slurm's pool list (learnt at its 30 s poll) is the do-nothing lua's or slurmlink's."""

        def known() -> bool:
            totals = [slurm_pool_total(self.cluster, pool) for pool in (BENCH_POOL, "xfs")]
            return all((total >= NOOP_POOL_BYTES // 2) if noop else (0 < total < NOOP_POOL_BYTES // 2)
                       for total in totals)  # fmt: skip

        if not known():
            log("waiting for Slurm's next pool poll (every 30 s)")
            wait_until(known, 120, "Slurm to know the pools", interval=1)

    def noop_lua(self) -> tuple[str, dict[str, int]]:
        """The dev cluster's do-nothing lua, listing the same pools with room for every job."""
        pools = {name: NOOP_POOL_BYTES for name in (BENCH_POOL, "xfs", "dir", "raw")}
        listing = json.dumps(
            {"pools": [{"id": name, "quantity": size, "granularity": 1} for name, size in pools.items()]}
        )
        source = placeholder_burst_buffer().lua_source
        source = source.replace("function slurm_bb_pools() return slurm.SUCCESS end\n", "")
        source += f"function slurm_bb_pools() return slurm.SUCCESS, '{listing}' end\n"
        return source, pools

    def use_plugin(self, which: str) -> None:
        """Swap burst_buffer.lua (noop / slurmlink) with the queue empty; wait for Slurm's pool poll."""
        if which == "noop":
            source, _pools = self.noop_lua()
            self.lua_path.write_text(source)
            self.wait_slurm_pools(noop=True)
        else:
            self.lua_path.write_text(self.real_lua)
            self.wait_slurm_pools(noop=False)
        log(f"burst_buffer.lua: {which}")

    def restore_lua(self) -> None:
        with contextlib.suppress(OSError):
            if self.lua_path.read_text() != self.real_lua:
                self.lua_path.write_text(self.real_lua)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = [int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            children = []
        out += children
        todo += children
    return out


# --------------------------------------------------------------------------------------------- phase 1


@dataclass
class AllocResult:
    jobs: int
    setup: list[float] = field(default_factory=list)  # Setup entered -> Setup ready
    submit_to_ready: list[float] = field(default_factory=list)
    peak_concurrent: int = 0
    batch: Batch | None = None
    missing: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


def allocation_latency(bench: Bench, watch: WorkflowWatch) -> AllocResult:
    args = bench.args
    script = bench.script(
        "bb-alloc.sh",
        f"#DW jobdw type=xfs capacity={args.alloc_capacity} name=bb pool={BENCH_POOL}\n/bin/true",
    )
    log(
        f"(1) submitting {args.alloc_jobs} jobdw jobs ({args.alloc_capacity} each), "
        f"load {os.getloadavg()[0]:.2f}"
    )
    cpu0 = bench.cpu_now()
    batch = bench.submit(script, args.alloc_jobs, "alloc")
    log(f"(1) submitted in {batch.submit_seconds:.1f} s; waiting for all to end")
    bench.wait(batch, args.phase_timeout)
    cpu1 = bench.cpu_now()
    result = AllocResult(args.alloc_jobs, batch=batch, cpu={k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1})
    intervals = []
    for job_id, wall, _ in batch.jobs:
        times = watch.get(f"bb{job_id}")
        if times is None or times.setup_start is None or times.setup_ready is None:
            result.missing += 1
            continue
        result.setup.append(times.setup_ready - times.setup_start)
        result.submit_to_ready.append(times.setup_ready - wall)
        intervals.append((times.setup_start, times.setup_ready))
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = 0
    for _, step in points:
        level += step
        result.peak_concurrent = max(result.peak_concurrent, level)
    bench.wait_quiet()
    return result


# --------------------------------------------------------------------------------------------- phase 2


def end_to_end(bench: Bench, which: str, round_no: int) -> Batch:
    args = bench.args
    bench.use_plugin(which)
    script = bench.script(
        "bb-e2e.sh", f"#DW jobdw type=xfs capacity={args.alloc_capacity} name=bb pool={BENCH_POOL}\n/bin/true"
    )
    return run_batch(bench, script, f"e2e-{which}-{round_no}", "(2)")


_STARTS = (
    ("main", re.compile(r"^\[(\S+)\] sched: Allocate JobId=(\d+) ")),
    ("backfill", re.compile(r"^\[(\S+)\] sched/backfill: _start_job: Started JobId=(\d+) ")),
)


def job_starts(slurmctld_log: Path, jobs: set[int]) -> list[list[float]]:
    """When each of ``jobs`` started (slurmctld.log), sorted: [main scheduler's, backfill's]."""
    try:
        lines = slurmctld_log.read_text(errors="replace").splitlines()
    except OSError:
        return [[] for _ in _STARTS]
    starts = []
    for _, pattern in _STARTS:
        times = []
        for line in lines:
            m = pattern.match(line)
            if m and int(m.group(2)) in jobs:
                times.append(dt.datetime.fromisoformat(m.group(1)).timestamp())
        starts.append(sorted(times))
    return starts


def starting_passes(starts: list[list[float]], gap: float = 0.2) -> tuple[int, int]:
    """How many of Slurm's scheduling passes, main and backfill, started the jobs of ``job_starts``.

    Both run every 2 s on the dev cluster. When their timers drift together, the first of the two takes
    every free slot and the other finds none: jobs then start at half the rate whatever the plugin, and
    a round in that phase says nothing about it. Starts of one kind less than ``gap`` apart are one pass.
    """
    counts = [sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > gap) for times in starts]
    return (counts[0], counts[1])


def run_batch(bench: Bench, script: Path, label: str, phase: str) -> Batch:
    """``--e2e-jobs`` submissions of ``script``, waited for until all ended and the system is quiet."""
    args = bench.args
    log(f"{phase} {label}: submitting {args.e2e_jobs} jobs, load {os.getloadavg()[0]:.2f}")
    cpu0, traffic0 = bench.cpu_now(), bench.traffic_now()
    batch = bench.submit(script, args.e2e_jobs, label)
    bench.wait(batch, args.phase_timeout)
    cpu1, traffic1 = bench.cpu_now(), bench.traffic_now()
    batch.cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    batch.traffic = {k: v - traffic0.get(k, 0.0) for k, v in traffic1.items() if v > traffic0.get(k, 0.0)}
    starts = job_starts(bench.cluster.slurmctld_log, {job for job, _, _ in batch.jobs})
    batch.passes = starting_passes(starts)
    if any(starts) and batch.jobs:
        batch.first_start = min(t for times in starts for t in times) - min(w for _, w, _ in batch.jobs)
    log(
        f"{phase} {label}: all ended after {batch.e2e_seconds:.1f} s ({batch.rate:.2f} jobs/s); latency p50 "
        f"{pct(batch.latencies, 50):.2f} s p99 {pct(batch.latencies, 99):.2f} s; {len(batch.failures)} failed"
    )
    bench.wait_quiet()
    return batch


# --------------------------------------------------------------------------------------------- phase 4


def staging_data(bench: Bench) -> tuple[Path, Path]:
    """The directory each job stages in (made once, the job user's) and where copies come back."""
    args = bench.args
    root = bench.cluster.jobs_dir / "stage-data"
    source, results = root / "in", root / "out"
    if not source.exists():
        source.mkdir(parents=True)
        for i in range(args.stage_files):
            (source / f"f{i:04d}").write_bytes(os.urandom(parse_size(args.stage_file_size)))
        results.mkdir()
        uid, gid = _job_ids(bench.cluster)
        for path in [root, *root.rglob("*")]:
            os.lchown(path, uid, gid)
    return source, results


def _job_ids(cluster: DevCluster) -> tuple[int, int]:
    entry = pwd.getpwnam(cluster.job_user)
    return entry.pw_uid, entry.pw_gid


def staging_end_to_end(bench: Bench, which: str, round_no: int) -> Batch:
    """``mover``: copy_in/copy_out directives; ``script``: the job copies with cp -a itself."""
    args = bench.args
    bench.use_plugin("slurmlink")
    source, results = staging_data(bench)
    buffer = f"#DW jobdw type=xfs capacity={args.alloc_capacity} name=bb pool={BENCH_POOL}"
    if which == "mover":
        body = (
            f"{buffer}\n#DW copy_in source={source} destination=$DW_JOB_bb/in\n"
            f"#DW copy_out source=$DW_JOB_bb/in destination={results}/mover\n/bin/true"
        )
    else:
        body = (
            f"{buffer}\nmkdir -p {results}/script\n"
            f'cp -a {source} "$DW_JOB_bb/in" && cp -a "$DW_JOB_bb/in" {results}/script/"$SLURM_JOB_ID"'
        )
    batch = run_batch(bench, bench.script(f"bb-stage-{which}.sh", body), f"stage-{which}-{round_no}", "(4)")
    shutil.rmtree(results / which, ignore_errors=True)
    return batch


# --------------------------------------------------------------------------------------------- phase 3


DD_RE = re.compile(r"^(\d+) bytes .* copied, ([\d.,]+) s", re.M)


def dd_rate(text: str) -> float:
    """MiB/s from dd's summary line (bytes / seconds, computed here rather than dd's rounded unit)."""
    match = DD_RE.search(text)
    if not match:
        raise BenchError(f"no dd summary in {text!r}")
    return int(match.group(1)) / float(match.group(2).replace(",", ".")) / (1 << 20)


#: dd's way past the page cache, per buffer type: O_DIRECT on XFS; glusterfs's FUSE client takes no
#: O_DIRECT by default, so its writes (and its baseline's) end with an fsync instead.
DD_FLAG = {"xfs": "oflag=direct", "gluster": "conv=fsync"}


@dataclass
class DdResult:
    fs_type: str = "xfs"
    buffer: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    load: float = float("nan")


class BaselineXfs:
    """An XFS made directly on a loop file of the buffer's size, on the host file system."""

    def __init__(self, directory: Path, size: int) -> None:
        self.image = directory / "baseline-xfs.img"
        self.mnt = directory / "baseline-mnt"
        self.size = size
        self.device: str | None = None
        self.mounted = False

    def __enter__(self) -> BaselineXfs:
        # Preallocated and attached like the xfs driver's buffers (fallocate, --direct-io=on).
        subprocess.run(["fallocate", "-l", str(self.size), str(self.image)], check=True)
        out = subprocess.run(
            ["losetup", "--find", "--show", "--nooverlap", "--direct-io=on", str(self.image)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.device = out.stdout.strip()
        env = {**os.environ, "TEST_DIR": "/tmp", "TEST_DEV": self.device, "QA_CHECK_FS": "1"}
        subprocess.run(["mkfs.xfs", "-q", "-f", self.device], check=True, env=env, capture_output=True)
        self.mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "xfs", self.device, str(self.mnt)], check=True)
        self.mounted = True
        return self

    def dd(self, count: int, flag: str = "oflag=direct") -> float:
        target = self.mnt / "f"
        out = subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}", flag],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        target.unlink()
        return dd_rate(out.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mnt)], check=False)
            self.mounted = False
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False)
            self.device = None
        with contextlib.suppress(OSError):
            self.image.unlink()
        with contextlib.suppress(OSError):
            self.mnt.rmdir()


def write_throughput(bench: Bench, fs_type: str = "xfs") -> DdResult:
    args = bench.args
    flag = DD_FLAG[fs_type]
    result = DdResult(fs_type=fs_type, load=os.getloadavg()[0])
    ctl = bench.cluster.jobs_dir / "dd-ctl"
    shutil.rmtree(ctl, ignore_errors=True)
    ctl.mkdir()
    ctl.chmod(0o777)
    rounds, count = args.dd_rounds, args.dd_mib
    script = bench.script(
        "bb-dd.sh",
        f"""
#SBATCH -N1
#DW jobdw type={fs_type} capacity={args.dd_capacity} name=bb pool={fs_type}
i=1
while [ $i -le {rounds} ]; do
  while [ ! -e {ctl}/go.$i ]; do sleep 0.05; done
  dd if=/dev/zero of=$DW_JOB_bb/f bs=1M count={count} {flag} 2> {ctl}/dd.$i.tmp
  rm -f $DW_JOB_bb/f
  findmnt -n -o SOURCE,FSTYPE --target $DW_JOB_bb >> {ctl}/dd.$i.tmp
  mv {ctl}/dd.$i.tmp {ctl}/dd.$i
  i=$((i+1))
done
""",
    )
    job_id = sbatch(bench.cluster, script, "bb-dd")
    log(
        f"(3) dd job {job_id}: {args.dd_capacity} {fs_type} buffer, "
        f"{rounds} rounds of {count} MiB, alternating"
    )
    with BaselineXfs(bench.qs.dir, parse_size(args.dd_capacity)) as base:
        wait_until(
            lambda: (bench.poller.state_of(job_id) or _NONE).state == "RUNNING" or bench.poller.done(job_id),
            300,
            f"dd job {job_id} to run",
            interval=0.2,
        )
        if bench.poller.done(job_id):
            raise BenchError(f"dd job {job_id} ended before it ran: {bench.poller.failure_of(job_id)}")
        for i in range(1, rounds + 1):
            result.direct.append(base.dd(count, flag))
            (ctl / f"go.{i}").touch()
            wait_until(lambda i=i: (ctl / f"dd.{i}").exists(), 600, f"dd round {i} in the job", interval=0.1)
            text = (ctl / f"dd.{i}").read_text()
            result.buffer.append(dd_rate(text))
            log(
                f"(3) round {i}: buffer {result.buffer[-1]:.1f} MiB/s ({text.strip().splitlines()[-1]}), "
                f"direct XFS on a loop file {result.direct[-1]:.1f} MiB/s"
            )
    deadline = time.monotonic() + 120
    while not bench.poller.done(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    bench.wait_quiet()
    return result


@dataclass
class _NoState:
    state: str = ""


_NONE = _NoState()


# ---------------------------------------------------------------------------------------------- report


def report_staging(staged: dict[str, list[Batch]], args: Any) -> None:
    print()
    print(f"4. {args.e2e_jobs} jobs staging {args.stage_files} x {args.stage_file_size} in and out: "
          "copy_in/copy_out (the mover) against cp -a in the job script:")  # fmt: skip
    print()
    print("| round | staged by | load | all ended after (s) | jobs/s | submit->end p50 / p99 (s) | failed |")
    print("|---|---|---|---|---|---|---|")
    for batch in sorted((b for runs in staged.values() for b in runs), key=lambda b: b.label[-1]):
        print(
            f"| {batch.label[-1]} | {batch.label.split('-')[1]} | {fmt(batch.load)} | "
            f"{fmt(batch.e2e_seconds, 1)} | {fmt(batch.rate)} | "
            f"{fmt(pct(batch.latencies, 50))} / {fmt(pct(batch.latencies, 99))} | {len(batch.failures)} |"
        )
    mover, script = staged.get("mover", []), staged.get("script", [])
    if mover and script:
        rm = statistics.median(b.rate for b in mover)
        rs = statistics.median(b.rate for b in script)
        print()
        print(f"Staging throughput mover / job script: {ratio(rm, rs)}")
        for batch in mover:
            if batch.cpu:
                print(f"CPU seconds ({batch.label}): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in sorted(batch.cpu.items())))  # fmt: skip
            print_traffic(batch)


def print_traffic(batch: Batch) -> None:
    """The API server's HTTP requests and watch events per job of ``batch``, the busiest first."""
    if not batch.traffic or not batch.jobs:
        return
    jobs = len(batch.jobs)
    for what in ("requests", "watch events", "watch writes"):
        rows = sorted(((v, k) for k, v in batch.traffic.items() if k[0] == what), reverse=True)
        if rows:
            total = sum(v for v, _ in rows) / jobs
            parts = ", ".join(f"{' '.join(filter(None, k[1:]))} {v / jobs:.1f}" for v, k in rows[:12])
            print(f"API {what} per job ({batch.label}): {total:.1f}: {parts}")


def report(
    alloc: AllocResult | None,
    e2e: dict[str, list[Batch]],
    dd: Sequence[DdResult],
    idle: dict[str, float],
    args: Any,
) -> None:
    print()
    print(f"Machine: {os.cpu_count()} cores; load average at the start of each phase in the tables.")
    print(
        f"CPU used with no job, over {args.idle_seconds:g} s (cores): "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(idle.items()))
    )
    if alloc is not None:
        b = alloc.batch
        print()
        print(f"1. Allocation latency, {alloc.jobs} jobdw jobs submitted at once "
              f"(xfs, {args.alloc_capacity} per job, "
              f"load {fmt(b.load if b else float('nan'))}):")  # fmt: skip
        print()
        print("| | p50 | p99 | max | n |")
        print("|---|---|---|---|---|")
        for label, values in (
            ("Workflow enters Setup -> Setup ready (s)", alloc.setup),
            ("sbatch -> Setup ready (s)", alloc.submit_to_ready),
            ("sbatch -> job ended, torn down (s)", b.latencies if b else []),
        ):
            top = max(values) if values else float("nan")
            print(
                f"| {label} | {fmt(pct(values, 50))} | {fmt(pct(values, 99))} | {fmt(top)} | {len(values)} |"
            )
        print()
        print(f"Peak Workflows in Setup at once: {alloc.peak_concurrent}; jobs without both timestamps: "
              f"{alloc.missing}; failed jobs: {len(b.failures) if b else '-'}")  # fmt: skip
        if alloc.cpu:
            print(
                "CPU seconds during phase 1: "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(alloc.cpu.items()))
            )
    if e2e:
        print()
        print(f"2. {args.e2e_jobs} jobdw jobs end to end: slurmlink against the do-nothing burst_buffer.lua:")
        print()
        print(
            "| round | plugin | load | first job started after (s) | all ended after (s) | jobs/s "
            "| submit->end p50 / p99 (s) | failed | Slurm passes that started jobs: main + backfill (per s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for batch in sorted((b for runs in e2e.values() for b in runs), key=lambda b: b.label[-1]):
            plugin = "slurmlink" if "slurmlink" in batch.label else "do-nothing"
            main, backfill = batch.passes
            per_second = (main + backfill) / batch.e2e_seconds
            print(
                f"| {batch.label[-1]} | {plugin} | {fmt(batch.load)} | {fmt(batch.first_start)} | "
                f"{fmt(batch.e2e_seconds, 1)} | "
                f"{fmt(batch.rate)} | {fmt(pct(batch.latencies, 50))} / {fmt(pct(batch.latencies, 99))} | "
                f"{len(batch.failures)} | {main} + {backfill} ({fmt(per_second)}) |"
            )
        sl, noop = e2e.get("slurmlink", []), e2e.get("noop", [])
        if sl and noop:
            rs = statistics.median(b.rate for b in sl)
            rn = statistics.median(b.rate for b in noop)
            verdict = "PASS" if rs >= 0.8 * rn else "FAIL"
            print()
            print(
                f"End-to-end throughput slurmlink / do-nothing: {ratio(rs, rn)} (target >= 0.80x: {verdict})"
            )
            lat_s = [x for b in sl for x in b.latencies]
            lat_n = [x for b in noop for x in b.latencies]
            print(
                f"Latency p50 slurmlink - do-nothing: {pct(lat_s, 50) - pct(lat_n, 50):+.2f} s, "
                f"p99 {pct(lat_s, 99) - pct(lat_n, 99):+.2f} s"
            )
            for batch in sl:
                if batch.cpu:
                    print(f"CPU seconds ({batch.label}): "
                          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(batch.cpu.items())))  # fmt: skip
                print_traffic(batch)
    if dd:
        print()
        flags = ", ".join(f"{t}: {f}" for t, f in DD_FLAG.items())
        print(f"3. Write throughput, dd bs=1M count={args.dd_mib} ({flags}), "
              f"{args.dd_capacity} file systems, alternating rounds:")  # fmt: skip
        print()
        print(
            "| type | load | in a job on the buffer (MiB/s) | XFS directly on a loop file (MiB/s) | ratio |"
        )
        print("|---|---|---|---|---|")
        for result in dd:
            mb, md = statistics.median(result.buffer), statistics.median(result.direct)
            rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(result.buffer, result.direct, strict=True))
            print(f"| {result.fs_type} | {fmt(result.load)} | {mb:.1f} | {md:.1f} | {ratio(mb, md)} "
                  f"(rounds buffer/direct: {rounds}) |")  # fmt: skip


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="1,2,3", help="which measurements, in this order (default 1,2,3)")
    parser.add_argument(
        "--alloc-jobs", type=int, default=100, help="jobs submitted at once in (1) (default 100)"
    )
    parser.add_argument("--alloc-capacity", default="64MiB", help="buffer size of (1) and (2), also the "
                        "granularity of the bench pool (default 64MiB)")  # fmt: skip
    parser.add_argument("--e2e-jobs", type=int, default=200, help="jobs per run in (2) (default 200)")
    parser.add_argument(
        "--e2e-rounds", type=int, default=1, help="do-nothing/slurmlink pairs in (2) (default 1)"
    )
    parser.add_argument("--stage-files", type=int, default=20, help="files each job stages in (4) (20)")
    parser.add_argument("--stage-file-size", default="256KiB", help="size of each staged file (256KiB)")
    parser.add_argument(
        "--stage-rounds", type=int, default=1, help="mover/job-script pairs in (4) (default 1)"
    )
    parser.add_argument("--dd-capacity", default="1GiB", help="buffer size in (3) (default 1GiB)")
    parser.add_argument("--dd-mib", type=int, default=512, help="MiB each dd writes (default 512)")
    parser.add_argument("--dd-rounds", type=int, default=3, help="alternating dd rounds (default 3)")
    parser.add_argument(
        "--time-limit",
        type=int,
        default=5,
        help="each job's --time in minutes, 0 for none (default 5): without one, jobs get the partition's "
        "unlimited time, backfill cannot plan them, and Slurm only starts the stage-in of jobs it has "
        "planned or its main scheduler reaches before the partition is full (docs/burst-buffers.md)",
    )
    parser.add_argument("--parallel", type=int, default=4, help="concurrent sbatch processes (default 4)")
    parser.add_argument("--compute-nodes", type=int, default=2)
    parser.add_argument("--storage-nodes", type=int, default=3)
    parser.add_argument("--storage-size", default="8GiB", help="each storage node's sparse loop file (8GiB)")
    parser.add_argument(
        "--idle-seconds", type=float, default=10, help="how long to measure the idle daemons' CPU (10)"
    )
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between squeue polls (default 0.2)")
    parser.add_argument("--phase-timeout", type=float, default=1200, help="seconds a batch may take (1200)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the quick start's dir (logs); it is stopped"
    )
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phases or any(p not in ("1", "2", "3", "4") for p in args.phases):
        parser.error("--phases takes 1, 2, 3 and/or 4, e.g. 1,2,3")
    return args


def run(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the quick start runs Slurm's daemons and mounts file systems")
    with contextlib.ExitStack() as stack:
        # Short: the gateway's socket path must stay under 108 bytes.
        directory = Path(tempfile.mkdtemp(prefix="slbbb-", dir="/var/tmp"))
        directory.chmod(0o755)
        qs = QuickStart(directory, args.compute_nodes, args.storage_nodes, args.storage_size)

        def cleanup() -> None:
            qs.down(purge=not args.keep)
            if args.keep:
                log(f"kept {directory}")
            else:
                shutil.rmtree(directory, ignore_errors=True)

        stack.callback(cleanup)
        cluster = qs.up(timeout=600)
        stack.callback(_cancel_jobs, qs, cluster)
        poller = JobPoller(cluster, args.poll)
        poller.start()
        stack.callback(poller.stop)
        bench = Bench(qs, cluster, poller, args)
        stack.callback(bench.restore_lua)
        bench.create_bench_pool()
        bench.wait_slurm_pools(noop=False)
        # What the daemons burn with no job at all: on 2 cores that is taken from every phase below.
        cpu0 = bench.cpu_now()
        time.sleep(args.idle_seconds)
        cpu1 = bench.cpu_now()
        idle = {k: (cpu1[k] - cpu0.get(k, 0.0)) / args.idle_seconds for k in cpu1}
        log("idle CPU (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(idle.items())))

        alloc: AllocResult | None = None
        e2e: dict[str, list[Batch]] = {}
        dd: list[DdResult] = []
        staged: dict[str, list[Batch]] = {}
        for phase in args.phases:
            if phase == "1":
                bench.use_plugin("slurmlink")
                # Only for this phase: a watcher more costs the server an event per Workflow write,
                # which the do-nothing plugin's rounds of (2) would not pay.
                watch = WorkflowWatch(qs)
                watch.start()
                try:
                    if not watch.synced.wait(60):
                        raise BenchError(f"the Workflow watch did not start: {watch.error}")
                    alloc = allocation_latency(bench, watch)
                finally:
                    watch.stop()
                log(f"(1) Setup latency p50 {pct(alloc.setup, 50):.2f} s p99 {pct(alloc.setup, 99):.2f} s, "
                    f"peak {alloc.peak_concurrent} in Setup")  # fmt: skip
            elif phase == "2":
                for round_no in range(1, args.e2e_rounds + 1):
                    # Alternate which goes first, so neither always runs on the warmer (or busier) machine.
                    order = ("noop", "slurmlink") if round_no % 2 else ("slurmlink", "noop")
                    for which in order:
                        e2e.setdefault(which, []).append(end_to_end(bench, which, round_no))
            elif phase == "4":
                for round_no in range(1, args.stage_rounds + 1):
                    order = ("script", "mover") if round_no % 2 else ("mover", "script")
                    for which in order:
                        staged.setdefault(which, []).append(staging_end_to_end(bench, which, round_no))
            else:
                bench.use_plugin("slurmlink")
                dd = [write_throughput(bench, fs_type) for fs_type in ("xfs", "gluster")]
        report(alloc, e2e, dd, idle, args)
        if staged:
            report_staging(staged, args)


def _cancel_jobs(qs: QuickStart, cluster: DevCluster) -> None:
    """On the way out: no job left to hold buffers (mounts, loop devices) while the quick start stops."""
    result = cluster.run_slurm(["squeue", "-h", "-o", "%i"], timeout=30)
    if result.returncode != 0 or not result.stdout.split():
        return
    log(f"cancelling {len(result.stdout.split())} jobs and waiting for their buffers to go")
    cluster.run_slurm(["scancel", "--user", cluster.job_user], timeout=30)
    deadline = time.monotonic() + 120
    with contextlib.suppress(Exception), qs.client() as api:
        while time.monotonic() < deadline:
            items = api.get(f"{SL}/namespaces/{NS}/storageallocations").json().get("items") or []
            queued = cluster.run_slurm(["squeue", "-h", "-o", "%i"], timeout=30).stdout.split()
            if not items and not queued:
                return
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        run(args)
    except KeyboardInterrupt:
        log("interrupted; everything was stopped")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
