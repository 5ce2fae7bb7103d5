#!/usr/bin/env python3
"""Benchmark: the bank's cost to Slurm and its own throughput.

Phases (``--phases submit,ledger,reconcile``; all by default):

* ``submit``: on the quick start (bank on), the time ``job_submit.lua`` takes per call inside
  slurmctld's lock (p50/p99; the script run by Lua 5.1 against the quick start's real gateway), and
  sbatch throughput with the bank's hook against the same cluster without it, side by side (ratio;
  targets >= 0.8x and p99 <= 10 ms).
* ``ledger``: holds+settles per second with ``--clients`` concurrent clients, on SQLite and on
  PostgreSQL (each run: one hold, one settle).
* ``reconcile``: ``slurmlink bank reconcile`` over ``--finished`` finished runs (sacct's answer
  replayed by a stand-in ``sacct`` on PATH: the bank's side of the work, not slurmdbd's).

Run by hand, as root:  python3 bench/bank.py [--phases submit] [--jobs 200] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from slurmlink.bank.ledger import Actor, Ledger
from slurmlink.bank.runs import RunKey
from slurmlink.store.sql import SqlStore
from support.postgres import PostgresServer

CARD = """\
version = "bench-1"
formula = "cpu_hours"

[partition.debug]
price = "1.00"
default = true
default_time = 60
max_time = "1-00:00:00"
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# ---- submit -------------------------------------------------------------------------------------------

LUA_HARNESS = r"""
local socket = require("socket.core")
local calls = tonumber(arg[2])
slurm = {
  SUCCESS = 0, ERROR = -1, ESLURM_ACCOUNTING_POLICY = 2050, NO_VAL = 4294967294,
  log_info = function(...) end, log_error = function(...) end, log_user = function(...) end,
}
dofile(arg[1])
local times = {}
for i = 1, calls do
  local desc = { partition = "debug", default_account = "default", user_id = 1000, num_tasks = 1,
                 cpus_per_task = 1, time_limit = 1, shared = 65534, min_nodes = 1 }
  local t0 = socket.gettime()
  local rc = slurm_job_submit(desc, {}, 1000)
  times[#times + 1] = socket.gettime() - t0
  if rc ~= slurm.SUCCESS then io.stderr:write("rejected\n") os.exit(1) end
end
for _, t in ipairs(times) do print(string.format("%.6f", t)) end
"""


def quickstart(args: list[str], state: Path, timeout: float = 600) -> None:
    argv = [sys.executable, "-m", "slurmlink.cli.main", "quickstart", *args, "--state-dir", str(state)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"quickstart {args[0]} failed:\n{done.stderr}")


def submit_phase(jobs: int, calls: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-bank-", dir="/var/tmp"))
    os.chmod(state, 0o755)
    ports = [
        "--ctld-port",
        "16917",
        "--slurmd-port",
        "16918",
        "--dbd-port",
        "16919",
        "--listen",
        "127.0.0.1:18543",
    ]
    env = {**os.environ, "SLURM_CONF": str(state / "cluster" / "etc" / "slurm.conf")}
    try:
        print(f"quick start with the bank in {state} ...", flush=True)
        quickstart(
            ["up", *ports, "--compute-nodes", "1", "--storage-nodes", "1", "--accounting", "--bank"], state
        )
        grant = [sys.executable, "-m", "slurmlink.cli.main", "bank", "grant", "default", "1000000"]
        subprocess.run(
            grant,
            env={**env, "KUBECONFIG": str(state / "server" / "admin.kubeconfig")},
            check=True,
            capture_output=True,
        )
        time.sleep(3)  # the gateway's copy of the balances (refreshed every 2 s)
        socket_path = state / "cluster" / "run" / "slurm-bb.sock"
        script = state / "cluster" / "etc" / "job_submit.lua"
        harness = state / "harness.lua"
        harness.write_text(LUA_HARNESS)
        done = subprocess.run(
            ["lua5.1", str(harness), str(script), str(calls)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"the Lua harness failed: {done.stderr}")
        times = [float(x) * 1000 for x in done.stdout.split()]
        print(
            f"job_submit.lua per call ({calls} calls, against the quick start's gateway at "
            f"{socket_path.name}): p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms, "
            f"max {max(times):.2f} ms"
        )

        jobs_dir = state / "cluster" / "jobs"
        job = jobs_dir / "bench.sh"
        job.write_text("#!/bin/sh\n#SBATCH --time=1\ntrue\n")
        job.chmod(0o644)

        def throughput(label: str) -> float:
            argv = [
                "runuser",
                "-u",
                "slurmlink-job",
                "--",
                "env",
                f"SLURM_CONF={env['SLURM_CONF']}",
                "sbatch",
                "--hold",
                "--parsable",
                "--chdir",
                str(jobs_dir),
                str(job),
            ]
            started = time.monotonic()
            for _ in range(jobs):
                subprocess.run(argv, check=True, capture_output=True, env=env)
            rate = jobs / (time.monotonic() - started)
            subprocess.run(["scancel", "-u", "slurmlink-job"], env=env, check=False)
            print(f"  sbatch {label}: {rate:.1f} jobs/s ({jobs} jobs)", flush=True)
            return rate

        with_bank = throughput("with the bank's job_submit.lua")
        quickstart(["up", "--no-bank"], state)
        without = throughput("without it (same cluster)")
        quickstart(["up", "--bank"], state)
        again = throughput("with the bank again")
        print(
            f"sbatch throughput with the bank / without: {min(with_bank, again) / without:.2f}x "
            "(target >= 0.8x)"
        )
    finally:
        quickstart(["down", "--purge"], state)


# ---- ledger -------------------------------------------------------------------------------------------


def ledger_phase(url: str, label: str, runs: int, clients: int) -> float:
    store = SqlStore(url)
    try:
        ledger = Ledger(store, "bench")
        ledger.create_account("bench")
        ledger.grant("bench", Decimal(10**9), key="bench-grant", actor=Actor("bench"))
        hook = Actor("bench", "hook")
        rng = random.Random(1)
        actual = [Decimal(rng.randrange(0, 1000)) / 100 for _ in range(runs)]

        def one(i: int) -> None:
            run = RunKey("bench", i + 1, 0, 1_700_000_000)
            ledger.hold(run, "bench", f"u{i % 16}", Decimal(10), actor=hook)
            ledger.settle(run, "bench", f"u{i % 16}", actual[i], actor=hook)

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(runs)))
        elapsed = time.monotonic() - started
        assert ledger.verify() == [], "the ledger is not sound after the run"
        rate = 2 * runs / elapsed
        print(
            f"  {label}: {rate:.0f} ledger operations/s ({runs} holds + {runs} settles, {clients} clients, "
            f"{elapsed:.1f} s)",
            flush=True,
        )
        return rate
    finally:
        store.close()


# ---- reconcile ----------------------------------------------------------------------------------------


def reconcile_phase(finished: int) -> None:
    from slurmlink.client.http import HttpClient
    from slurmlink.slurm.commands import SlurmCommands
    from slurmlink.slurm.gateway.bank import BankHooks
    from slurmlink.slurm.gateway.banksettings import BankSettings
    from support.server import ServerProcess

    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    server = ServerProcess(work / "state", extra_args=("--cluster-name", "bench"))
    server.start()
    try:
        with server.client() as admin:
            assert admin.post("/bank/v1/ratecards", json={"toml": CARD}).status_code == 200
            assert admin.post("/bank/v1/accounts", json={"name": "bench"}).status_code == 200
            assert (
                admin.post("/bank/v1/accounts/bench/grants", json={"amount": "100000000"}).status_code == 200
            )
        rows = []
        now = int(time.time())
        for job in range(1, finished + 1):
            fields = [
                str(job),
                str(job),
                "bench",
                "bench",
                "alice",
                "debug",
                "normal",
                "COMPLETED",
                str(now - 7200),
                str(now - 3600),
                str(now - 3000),
                "600",
                "cpu=2,mem=1G,node=1,billing=2",
            ]
            rows.append("|".join(fields))
        stand_in = work / "bin"
        stand_in.mkdir()
        (work / "sacct.out").write_text("\n".join(rows) + "\n")
        sacct = stand_in / "sacct"
        sacct.write_text(f"#!/bin/sh\nexec cat {work / 'sacct.out'}\n")
        sacct.chmod(0o755)
        os.environ["PATH"] = f"{stand_in}:{os.environ['PATH']}"

        async def run() -> tuple[float, str]:
            client = HttpClient.from_kubeconfig(server.kubeconfig)
            try:
                hooks = BankHooks(
                    client, SlurmCommands(None, timeout=600), BankSettings(reconcile_interval=0)
                )
                started = time.monotonic()
                report = await hooks.reconcile(86400)
                first = time.monotonic() - started
                started = time.monotonic()
                again = await hooks.reconcile(86400)
                second = time.monotonic() - started
                return first, f"{report.summary()}; again in {second:.1f} s: {again.summary()}"
            finally:
                await client.aclose()

        first, summary = asyncio.run(run())
        print(
            f"reconcile over {finished} finished runs: {first:.1f} s ({finished / first:.0f} runs/s); "
            f"{summary}"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="submit,ledger,reconcile")
    parser.add_argument("--jobs", type=int, default=200, help="sbatch calls per side")
    parser.add_argument("--calls", type=int, default=2000, help="job_submit.lua calls timed")
    parser.add_argument("--runs", type=int, default=2000, help="ledger runs (hold + settle each)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--finished", type=int, default=10000)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if "ledger" in phases:
        print("ledger:", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = ledger_phase(f"sqlite:///{tmp}/bank.db", "SQLite", args.runs, args.clients)
        with PostgresServer() as pg:
            postgres = ledger_phase(pg.create_database("bench"), "PostgreSQL", args.runs, args.clients)
        print(f"  PostgreSQL / SQLite: {postgres / sqlite:.2f}x")
    if "reconcile" in phases:
        reconcile_phase(args.finished)
    if "submit" in phases:
        submit_phase(args.jobs, args.calls)


if __name__ == "__main__":
    main()
