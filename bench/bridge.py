#!/usr/bin/env python3
"""Benchmark: the job bridge against plain sbatch, on the quick start's real Slurm.

Both sides run the same ``--jobs`` trivial scripts (``#!/bin/sh`` + ``true``) as the cluster's job
user, side by side in one run:

* **plain**: ``sbatch`` in a loop, then ``squeue`` once a second until none is left (what a script
  on a login node would do);
* **bridge**: the same number of SlurmJobs created at once through the API (a ``user`` credential,
  ``--clients`` concurrent connections), until every one is ``Succeeded``.

Printed: jobs per second from the first submission to the last job done, the ratio bridge/plain
(target >= 0.8x), the Slurm commands the bridge ran per tick to follow them (from its
``/metrics``; target <= 2 whatever the number of jobs), and the CPU seconds of the server process
(the bridge, its API and store) and of the plain loop's own commands.

Run by hand, as root:  python3 bench/bridge.py [--jobs 1000] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from procstat import cpu_seconds
from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.client.http import ssl_context

JOB_USER = "slurmlink-job"
SCRIPT = "#!/bin/sh\ntrue\n"
V1 = "/apis/slurmlink.io/v1/namespaces/default/slurmjobs"


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "slurmlink.cli.main", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stderr}")
    return done


def client(kubeconfig: Path, connections: int) -> httpx.Client:
    creds = load_kubeconfig(kubeconfig)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.Client(base_url=creds.server, verify=ssl_context(creds), timeout=120, limits=limits)


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def drain(env: dict[str, str]) -> None:
    subprocess.run(["scancel", "-u", JOB_USER], env=env, check=False, capture_output=True)
    while subprocess.run(
        ["squeue", "-h", "-u", JOB_USER, "-t", "PD,R,CG,CF,S"], env=env, capture_output=True, text=True
    ).stdout.strip():
        time.sleep(1)


def plain(jobs: int, jobs_dir: Path, env: dict[str, str]) -> float:
    script = jobs_dir / "bench.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    sbatch = ["runuser", "-u", JOB_USER, "--", "env", f"SLURM_CONF={env['SLURM_CONF']}", "sbatch",
              "--parsable", "--chdir", str(jobs_dir), str(script)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    for _ in range(jobs):
        subprocess.run(sbatch, check=True, capture_output=True, env=env)
    submitted = time.monotonic() - started
    polls = 0
    while True:
        polls += 1
        left = subprocess.run(
            ["squeue", "-h", "-u", JOB_USER, "-t", "PD,R,CG,CF,S", "-o", "%i"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if not left:
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rate = jobs / elapsed
    print(
        f"  plain sbatch loop: {jobs} jobs in {elapsed:.1f} s ({rate:.1f} jobs/s; sbatch loop "
        f"{submitted:.1f} s; {polls} squeue polls; client CPU {cpu:.1f} s)",
        flush=True,
    )
    return rate


def bridge(
    jobs: int, user: httpx.Client, admin: httpx.Client, server_pid: int, clients: int, tag: str
) -> float:
    names = [f"bench-{tag}-{i:05d}" for i in range(jobs)]
    metrics_before = admin.get("/metrics").text
    cpu_before = cpu_seconds(server_pid)

    def create(name: str) -> None:
        body = {"apiVersion": "slurmlink.io/v1", "kind": "SlurmJob", "metadata": {"name": name},
                "spec": {"script": SCRIPT}}  # fmt: skip
        r = user.post(V1, json=body)
        if r.status_code != 201:
            raise SystemExit(f"create {name}: {r.status_code} {r.text}")

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create, names))
    created = time.monotonic() - started
    wanted = set(names)
    while True:
        items = user.get(V1).json()["items"]
        phases = {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}
        done = [n for n in wanted if phases.get(n) in ("Succeeded", "Failed", "Cancelled", "Unknown")]
        if len(done) == len(wanted):
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    failed = [n for n in wanted if phases.get(n) != "Succeeded"]
    metrics_after = admin.get("/metrics").text
    cpu = cpu_seconds(server_pid) - cpu_before
    ticks = metric(metrics_after, "slurmlink_bridge_ticks_total") - metric(
        metrics_before, "slurmlink_bridge_ticks_total"
    )
    commands = metric(metrics_after, "slurmlink_bridge_slurm_commands_total") - metric(
        metrics_before, "slurmlink_bridge_slurm_commands_total"
    )
    rate = jobs / elapsed
    print(
        f"  bridge: {jobs} SlurmJobs in {elapsed:.1f} s ({rate:.1f} jobs/s; created in {created:.1f} s; "
        f"{len(failed)} not Succeeded); {commands:.0f} Slurm commands in {ticks:.0f} ticks = "
        f"{commands / max(ticks, 1):.2f} per tick; server CPU {cpu:.1f} s",
        flush=True,
    )
    for name in names:  # keep the next round's lists small
        user.delete(f"{V1}/{name}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="leave the quick start running")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-bridge-", dir="/var/tmp"))
    os.chmod(state, 0o755)
    ports = ["--ctld-port", "16927", "--slurmd-port", "16928", "--listen", "127.0.0.1:18553"]
    env = {**os.environ, "SLURM_CONF": str(state / "cluster" / "etc" / "slurm.conf")}
    try:
        print(f"quick start in {state} ...", flush=True)
        cli("quickstart", "up", "--state-dir", str(state), *ports, "--compute-nodes", "2",
            "--storage-nodes", "1", "--no-accounting", "--no-bank")  # fmt: skip
        kubeconfig = state / "bench-user.kubeconfig"
        cli("kubeconfig", "--state-dir", str(state / "server"), "--role", "user", "--user", JOB_USER,
            "--out", str(kubeconfig))  # fmt: skip
        server_pid = int((state / "run" / "server.pid").read_text())
        user = client(kubeconfig, args.clients)
        admin = client(state / "server" / "admin.kubeconfig", 2)
        jobs_dir = state / "cluster" / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        shutil.chown(jobs_dir, JOB_USER)
        print(f"{args.jobs} trivial jobs each way, 2 compute nodes:", flush=True)
        first = plain(args.jobs, jobs_dir, env)
        drain(env)
        ours = bridge(args.jobs, user, admin, server_pid, args.clients, "a")
        drain(env)
        second = plain(args.jobs, jobs_dir, env)
        baseline = max(first, second)
        print(f"bridge / plain sbatch throughput: {ours / baseline:.2f}x (target >= 0.8x)")
    finally:
        if not args.keep:
            cli("quickstart", "down", "--state-dir", str(state), "--purge")


if __name__ == "__main__":
    main()
