"""Prometheus metrics of the API server and controllers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "slurmlink_api_requests_total",
    "API requests by verb, resource and HTTP code",
    ["verb", "resource", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "slurmlink_api_request_duration_seconds",
    "API request latency (watches excluded)",
    ["verb", "resource"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
WATCHES = Gauge("slurmlink_api_watches", "Open watch streams", ["resource"], registry=REGISTRY)
WATCH_EVENTS = Counter(
    "slurmlink_api_watch_events_total",
    "Events sent on watch streams over HTTP, by resource (bookmarks and initial lists included)",
    ["resource"],
    registry=REGISTRY,
)
WATCH_WRITES = Counter(
    "slurmlink_api_watch_writes_total",
    "Writes to watch streams over HTTP, by resource: each carries the events that were queued together",
    ["resource"],
    registry=REGISTRY,
)
BRIDGE_SLURM_COMMANDS = Counter(
    "slurmlink_bridge_slurm_commands_total",
    "Slurm commands the job bridge ran to follow jobs (scontrol, sacct; not sbatch/scancel)",
    ["command"],
    registry=REGISTRY,
)
BRIDGE_TICKS = Counter(
    "slurmlink_bridge_ticks_total", "Reads of Slurm's jobs by the job bridge", registry=REGISTRY
)
BRIDGE_SUBMISSIONS = Counter(
    "slurmlink_bridge_submissions_total",
    "sbatch runs by the job bridge, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
RECONCILES = Counter(
    "slurmlink_reconciles_total",
    "Reconciles by controller and result",
    ["controller", "result"],
    registry=REGISTRY,
)
STORE_REVISION = Gauge(
    "slurmlink_store_revision", "Newest store revision seen by the watch hub", registry=REGISTRY
)
POOL_BYTES = Gauge(
    "slurmlink_storage_pool_bytes",
    "Burst-buffer pool capacity in bytes: total, and free (not handed out, on usable nodes)",
    ["pool", "state"],
    registry=REGISTRY,
)
BUFFER_ALLOCATION = Histogram(
    "slurmlink_burst_buffer_allocation_seconds",
    "From placement until every storage node reports a buffer's file systems ready",
    ["type"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
DATA_MOVED_BYTES = Counter(
    "slurmlink_data_movement_bytes",
    "Bytes copied into (in) and out of (out) burst buffers by finished stage-in and stage-out copies",
    ["direction"],
    registry=REGISTRY,
)
DATA_MOVED_FILES = Counter(
    "slurmlink_data_movement_files",
    "Files copied into (in) and out of (out) burst buffers by finished copies",
    ["direction"],
    registry=REGISTRY,
)
DATA_MOVEMENT_SECONDS = Histogram(
    "slurmlink_data_movement_seconds",
    "How long one finished stage-in or stage-out copy took",
    ["direction"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
DATA_MOVEMENT_RATE = Histogram(
    "slurmlink_data_movement_rate_bytes_per_second",
    "Throughput of one finished stage-in or stage-out copy",
    ["direction"],
    buckets=(1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 5e9),
    registry=REGISTRY,
)
