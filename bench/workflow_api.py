#!/usr/bin/env python3
"""Benchmark: Workflows driven Proposal -> Teardown -> deleted through the API, with the test driver.

Prints, for SQLite and PostgreSQL stores:
  * state transitions per second with N concurrent clients (each: create, 6 desiredState patches,
    wait for ready=true via one shared watch, delete);
  * p50/p99 latency from a desiredState patch to the watch event showing ready=true;
  * watch delivery latency (write response -> event with that resourceVersion);
  * the server's CPU for the API run, in all and per transition;
and, side by side in the same run, the upstream plugin's way of driving the same workflows (one
kubectl process per call, polling every second) as the baseline, with the ratio. Also the median of
20 ``kubectl get -o jsonpath`` calls against slurmlink.

Run by hand:  python3 bench/workflow_api.py [--workflows 200] [--clients 8] [--baseline-workflows 8]
                                           [--rounds 1]

Both stores' servers run side by side. With ``--rounds N`` the API runs alternate between them N times
(SQLite, PostgreSQL, SQLite, ...) and the figures are the medians: on a small shared machine single runs
differ by ±15 %, and the PostgreSQL / SQLite ratio is then taken from runs minutes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from procstat import cpu_seconds
from slurmlink.auth.kubeconfig import load_kubeconfig
from support.kubectl import kubectl_120, run_kubectl
from support.postgres import PostgresServer
from support.server import ServerProcess

G = "dataworkflowservices.github.io"
V = "v1alpha2"
NS = "slurm"
STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
BASE = f"/apis/{G}/{V}/namespaces/{NS}/workflows"


def workflow(name: str, job: int) -> dict:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [f"#DW {s} action=complete" for s in STATES],
            "wlmID": "slurm",
            "jobID": str(job),
            "userID": 1001,
            "groupID": 1001,
        },
    }


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Watcher:
    """One watch over the namespace; wakes waiters when a workflow reaches (state, ready)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.waiters: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.sent: dict[str, float] = {}
        self.arrivals: dict[str, float] = {}
        self.gone: dict[str, asyncio.Future[float]] = {}

    async def run(self, start_rv: str) -> None:
        params = {"watch": "1", "resourceVersion": start_rv}
        async with self.client.stream("GET", BASE, params=params, timeout=None) as resp:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                now = time.perf_counter()
                event = json.loads(line)
                obj = event["object"]
                self.arrivals[obj["metadata"].get("resourceVersion", "")] = now
                name = obj["metadata"]["name"]
                if event["type"] == "DELETED":
                    fut = self.gone.pop(name, None)
                    if fut and not fut.done():
                        fut.set_result(now)
                    continue
                status = obj.get("status") or {}
                if status.get("ready") and status.get("state"):
                    fut = self.waiters.pop((name, status["state"]), None)
                    if fut and not fut.done():
                        fut.set_result(now)

    def expect(self, name: str, state: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[(name, state)] = fut
        return fut

    def expect_gone(self, name: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.gone[name] = fut
        return fut


def make_client(server: ServerProcess) -> httpx.AsyncClient:
    creds = load_kubeconfig(server.kubeconfig)
    ctx = ssl.create_default_context(cadata=(creds.ca_pem or b"").decode())
    d = Path(tempfile.mkdtemp())
    (d / "c.crt").write_bytes(creds.cert_pem or b"")
    (d / "c.key").write_bytes(creds.key_pem or b"")
    ctx.load_cert_chain(str(d / "c.crt"), str(d / "c.key"))
    return httpx.AsyncClient(
        base_url=server.url,
        verify=ctx,
        timeout=60,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def drive_api(server: ServerProcess, workflows: int, clients: int, first_job: int) -> dict[str, float]:
    client = make_client(server)
    start_rv = (await client.get(BASE)).json()["metadata"]["resourceVersion"]
    watcher = Watcher(client)
    watch_task = asyncio.create_task(watcher.run(start_rv))
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(workflows):
        queue.put_nowait(first_job + i)

    async def one(job: int) -> None:
        name = f"bb{job}"
        ready = watcher.expect(name, "Proposal")
        r = await client.post(BASE, json=workflow(name, job))
        r.raise_for_status()
        await asyncio.wait_for(ready, 30)
        for state in STATES[1:]:
            ready = watcher.expect(name, state)
            sent = time.perf_counter()
            r = await client.patch(
                f"{BASE}/{name}",
                content=json.dumps({"spec": {"desiredState": state}}),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            r.raise_for_status()
            watcher.sent[r.json()["metadata"]["resourceVersion"]] = time.perf_counter()
            latencies.append(await asyncio.wait_for(ready, 30) - sent)
        gone = watcher.expect_gone(name)
        (await client.delete(f"{BASE}/{name}")).raise_for_status()
        await asyncio.wait_for(gone, 30)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    watch_task.cancel()
    await client.aclose()
    # An event may arrive before the write's own response is read: that counts as zero delay.
    delivery = [
        max(0.0, watcher.arrivals[rv] - t) for rv, t in watcher.sent.items() if rv in watcher.arrivals
    ]
    return {
        "transitions_per_s": workflows * len(STATES) / elapsed,
        "workflows_per_s": workflows / elapsed,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "watch_p50_ms": pct(delivery, 50) * 1000,
        "watch_p99_ms": pct(delivery, 99) * 1000,
        "elapsed_s": elapsed,
    }


def drive_upstream_style(
    kubectl: Path, kubeconfig: Path, workflows: int, clients: int, first_job: int, workdir: Path
) -> dict[str, float]:
    """The upstream plugin's pattern: kubectl apply/patch/get per call, sleep 1 s between polls."""
    import concurrent.futures

    def kc(*args: str) -> str:
        r = run_kubectl(kubectl, kubeconfig, *args)
        if r.returncode:
            raise RuntimeError(r.stderr)
        return r.stdout

    query = (
        'desiredState={.spec.desiredState}{"\\n"}currentState={.status.state}{"\\n"}status={.status.status}'
    )

    def wait_complete(name: str) -> None:
        while True:
            out = dict(
                line.split("=", 1)
                for line in kc("get", f"workflows.{G}", name, "-o", f"jsonpath={query}").splitlines()
            )
            if out.get("desiredState") == out.get("currentState") and out.get("status") == "Completed":
                return
            time.sleep(1)

    def one(job: int) -> None:
        name = f"bb{job}"
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(workflow(name, job)))
        kc("apply", "-f", str(path))
        wait_complete(name)
        for state in STATES[1:]:
            kc(
                "patch",
                f"workflows.{G}",
                name,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"desiredState": state}}),
            )
            wait_complete(name)
        kc("delete", f"workflows.{G}", name)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(first_job, first_job + workflows)))
    elapsed = time.perf_counter() - t0
    return {"transitions_per_s": workflows * len(STATES) / elapsed, "elapsed_s": elapsed}


def kubectl_latency(kubectl: Path, kubeconfig: Path, name: str, resource: str) -> float:
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        r = run_kubectl(kubectl, kubeconfig, "get", resource, name, "-o", "jsonpath={.status.state}")
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    return statistics.median(times) * 1000


def wlm_kubeconfig(server: ServerProcess) -> Path:
    return server.issue_kubeconfig("slurm-dws", "workload-manager", NS)


def measure_api(server: ServerProcess, args: argparse.Namespace, first_job: int) -> dict[str, float]:
    """One API run against ``server``, with the server's CPU seconds for it."""
    assert server.proc is not None
    cpu_before = cpu_seconds(server.proc.pid)
    ours = asyncio.run(drive_api(server, args.workflows, args.clients, first_job))
    ours["server_cpu_s"] = cpu_seconds(server.proc.pid) - cpu_before
    return ours


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report_store(
    label: str, server: ServerProcess, runs: list[dict[str, float]], args: argparse.Namespace, kubectl: Path
) -> None:
    """The store's API figures (medians over the rounds), then its baseline and kubectl latency."""
    kubeconfig = wlm_kubeconfig(server)
    upstream = drive_upstream_style(
        kubectl, kubeconfig, args.baseline_workflows, args.clients, 50000, server.state_dir.parent
    )
    asyncio.run(drive_one_for_latency(server))  # a workflow to query for kubectl latency
    short = kubectl_latency(kubectl, kubeconfig, "bblat", "workflow")
    qualified = kubectl_latency(kubectl, kubeconfig, "bblat", f"workflows.{G}")
    rate = median_of(runs, "transitions_per_s")
    server_cpu = median_of(runs, "server_cpu_s")
    rounds = f", median of {len(runs)} rounds" if len(runs) > 1 else ""
    print(f"\n== {label} store, {args.clients} concurrent clients{rounds} ==")
    print(
        f"slurmlink API + watch : {rate:8.1f} transitions/s "
        f"({args.workflows} workflows in {median_of(runs, 'elapsed_s'):.1f} s)"
    )
    print(
        f"upstream-style kubectl: {upstream['transitions_per_s']:8.1f} transitions/s "
        f"({args.baseline_workflows} workflows in {upstream['elapsed_s']:.1f} s)"
    )
    print(f"ratio                 : {rate / upstream['transitions_per_s']:8.1f} x")
    transitions = args.workflows * len(STATES)
    print(
        f"server CPU            : {server_cpu:.2f} s for the API run, "
        f"{1000 * server_cpu / transitions:.2f} ms per transition"
    )
    print(
        f"patch -> ready latency: p50 {median_of(runs, 'p50_ms'):.1f} ms, "
        f"p99 {median_of(runs, 'p99_ms'):.1f} ms"
    )
    print(
        f"watch delivery        : p50 {median_of(runs, 'watch_p50_ms'):.1f} ms, "
        f"p99 {median_of(runs, 'watch_p99_ms'):.1f} ms"
    )
    print(
        f"kubectl get -o jsonpath (median of 20): {short:.0f} ms as 'workflow', "
        f"{qualified:.0f} ms as 'workflows.{G}' (re-runs discovery each call)"
    )


def bench(args: argparse.Namespace, kubectl: Path) -> None:
    """Every store's server side by side; the API runs alternate between them, round by round."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        for label, key in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
            if key not in args.stores:
                continue
            store = None
            if key == "postgres":
                store = stack.enter_context(PostgresServer()).create_database("bench")
            base = Path(tempfile.mkdtemp(prefix=f"bench-{key}-"))
            servers[label] = stack.enter_context(ServerProcess(base / "state", store=store))
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        for number in range(args.rounds):
            for label, server in servers.items():
                run = measure_api(server, args, first_job=1000 + number * args.workflows)
                runs[label].append(run)
                if args.rounds > 1:
                    print(
                        f"round {number + 1}: {label:10s} {run['transitions_per_s']:7.1f} transitions/s, "
                        f"server CPU {1000 * run['server_cpu_s'] / (args.workflows * len(STATES)):.2f} ms "
                        "per transition",
                        flush=True,
                    )
        for label, server in servers.items():
            report_store(label, server, runs[label], args, kubectl)
        if len(servers) == 2:
            ratios = [
                pg["transitions_per_s"] / lite["transitions_per_s"]
                for lite, pg in zip(runs["SQLite"], runs["PostgreSQL"], strict=True)
            ]
            each = f" (median of {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            print(f"\nPostgreSQL / SQLite, same rounds: {statistics.median(ratios):.2f}x{each}")


async def drive_one_for_latency(server: ServerProcess) -> None:
    client = make_client(server)
    r = await client.post(BASE, json=workflow("bblat", 1))
    r.raise_for_status()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline-workflows", type=int, default=8)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="API runs per store, alternating between the stores; figures are the medians (default 1)",
    )
    args = parser.parse_args()
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not args.stores or any(s not in ("sqlite", "postgres") for s in args.stores):
        parser.error("--stores takes sqlite, postgres or both, e.g. sqlite,postgres")
    if min(args.workflows, args.clients, args.baseline_workflows, args.rounds) < 1:
        parser.error("--workflows, --clients, --baseline-workflows and --rounds must be positive")
    bench(args, kubectl_120())


if __name__ == "__main__":
    main()
