"""``slurmlink serve``: store + watch hub + API + in-process controllers, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import uvicorn

from slurmlink.api.app import build_app
from slurmlink.api.security import Authenticator
from slurmlink.api.tls import PeerCertProtocol, server_ssl_context
from slurmlink.api.whoami import WHOAMI
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth import delegation, roles
from slurmlink.auth.kubeconfig import build_kubeconfig, load_kubeconfig, write_kubeconfig
from slurmlink.auth.pki import CertificateAuthority, ensure_server_credentials
from slurmlink.auth.tokens import TokenStore
from slurmlink.bank import observe
from slurmlink.bank.api import bank_component
from slurmlink.bank.kubeview import bank_account_kind
from slurmlink.bank.ledger import Actor, Ledger
from slurmlink.bank.mybrc import mybrc_component
from slurmlink.bridge.api import bridge_component
from slurmlink.bridge.controller import BridgeSettings
from slurmlink.burstbuffer import directives as bbd
from slurmlink.burstbuffer.api import storage_component
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig, split_listen
from slurmlink.controllers.leaderelection import LEASE_NAME, LeaderElectionConfig, default_identity
from slurmlink.controllers.manager import Manager
from slurmlink.controllers.registry import ControllerSettings
from slurmlink.cpu_priority import lower_cpu_priority
from slurmlink.resources import errors
from slurmlink.resources.bridge.node import node_kind
from slurmlink.resources.bridge.partition import PARTITION
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.coordination import NODE_LEASE_NAMESPACE
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.dws import directives
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.slurm.partition_config import load_partition_config
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore

log = logging.getLogger("slurmlink.server")
#: Seconds between sweeps for bank allocations past their end.
BANK_EXPIRY_INTERVAL = 300.0


def pki_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def ensure_admin_kubeconfig(config: ServerConfig, ca: CertificateAuthority) -> Path:
    """Write ``admin.kubeconfig`` unless a valid one for this server and CA exists."""
    path = config.admin_kubeconfig
    if path.exists():
        try:
            creds = load_kubeconfig(path)
            if creds.server == config.url and creds.ca_pem == ca.cert_pem:
                return path
        except ValueError:
            pass
    client = ca.issue_client("admin", [roles.role_group("admin")])
    write_kubeconfig(
        path, build_kubeconfig(config.url, ca.cert_pem, "admin", client=client, namespace="default")
    )
    return path


def bootstrap(service: ResourceService, config: ServerConfig) -> None:
    """Namespaces (the configured ones, the system namespace, the node agents' heartbeat Leases'),
    the burst-buffer driver's directive rules and, unless turned off, the test driver's."""
    for name in dict.fromkeys([*config.namespaces, config.system_namespace, NODE_LEASE_NAMESPACE]):
        try:
            service.create(NAMESPACE, "v1", None, {"metadata": {"name": name}}, roles.SYSTEM)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
    rules = bbd.slurmlink_rules(config.system_namespace) if config.burst_buffer_driver else []
    if config.test_driver:
        rules += directives.tester_rules()
    for rule in rules:
        rule = dict(rule, apiVersion=DW_DIRECTIVE_RULE.api_version(DW_DIRECTIVE_RULE.storage_version))
        rule["metadata"] = {**rule.get("metadata", {}), "namespace": config.system_namespace}
        name = rule["metadata"]["name"]
        try:
            service.create(
                DW_DIRECTIVE_RULE,
                DW_DIRECTIVE_RULE.storage_version,
                config.system_namespace,
                rule,
                roles.SYSTEM,
            )
        except errors.ApiError as exc:
            if exc.code != 409:
                raise
            current = service.get_storage(DW_DIRECTIVE_RULE, config.system_namespace, name)
            if current.get("spec") != rule.get("spec"):
                current["spec"] = rule["spec"]
                service.update_storage(DW_DIRECTIVE_RULE, current, roles.SYSTEM)


@dataclass
class Server:
    """A running server's parts; ``run()`` serves until cancelled or signalled."""

    config: ServerConfig
    store: SqlStore = field(init=False)
    hub: WatchHub = field(init=False)
    service: ResourceService = field(init=False)
    manager: Manager | None = None
    bridge: BridgeSettings | None = None

    def prepare(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)
        if not cfg.insecure_http:
            ensure_server_credentials(cfg.state_dir, certificate_hosts(cfg))
            ca = CertificateAuthority.load_or_create(pki_dir(cfg.state_dir))
            ensure_admin_kubeconfig(cfg, ca)
        self.store = SqlStore(cfg.store_url)
        self.hub = WatchHub(self.store)
        self.service = ResourceService(
            self.store, default_registry(), self.hub, system_namespace=cfg.system_namespace
        )
        bootstrap(self.service, cfg)
        self.bridge = bridge_settings(cfg)
        delegation.configure(cfg.bridge_delegates)

    async def _partitions(self) -> list[dict[str, Any]]:
        """Every Partition, for the virtual Nodes (``resources.bridge.node``)."""
        return await self.service.run(self.service.list_cached, PARTITION, None)

    async def run(self) -> None:
        cfg = self.config
        await self.hub.start()
        client = InProcessClient(self.service)
        if cfg.controllers:
            self.manager = Manager(
                client,
                test_driver=cfg.test_driver,
                workers=4,
                election=election_config(cfg),
                settings=ControllerSettings(
                    node_heartbeat_timeout=cfg.node_heartbeat_timeout, bridge=self.bridge
                ),
            )
            self.manager.start()

        async def ready() -> bool:
            return self.manager is None or self.manager.synced

        tokens = TokenStore(cfg.state_dir / "tokens.json")
        auth = Authenticator(tokens, open_access=cfg.insecure_http)
        ledger = Ledger(self.store, cfg.cluster_name)
        self.service.registry.add(bank_account_kind(ledger))
        self.service.registry.add(node_kind(self._partitions))
        components = (
            WHOAMI,
            storage_component(self.service),
            bank_component(ledger),
            mybrc_component(ledger),
            *((bridge_component(self.service, self.bridge),) if self.bridge is not None else ()),
        )
        app = build_app(
            self.service, auth, ready, components=components, scrape_hooks=(observe.refresher(ledger),)
        )
        uv_kwargs: dict[str, object] = {}
        if not cfg.insecure_http:
            creds = ensure_server_credentials(cfg.state_dir, certificate_hosts(cfg))
            ssl_context = server_ssl_context(
                str(creds.server_cert), str(creds.server_key), str(creds.ca_cert)
            )
            uv_kwargs["ssl_context_factory"] = lambda _config, _default: ssl_context
            uv_kwargs["ssl_certfile"] = str(creds.server_cert)
        uv_config = uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            http=PeerCertProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            **uv_kwargs,  # type: ignore[arg-type]
        )
        server = _Server(uv_config, on_shutdown=self.hub.end_watches)
        sockets = listening_sockets([cfg.listen, *cfg.extra_listen])
        compactor = asyncio.create_task(self._compact_forever(), name="compactor")
        expiry = asyncio.create_task(self._expire_forever(ledger), name="bank-expiry")
        log.info(
            "serving",
            extra={
                "url": cfg.url,
                "listen": [cfg.listen, *cfg.extra_listen],
                "store": _redacted(cfg.store_url),
            },
        )
        keep_signals_for_cleanup()
        # What start-up built (modules, schemas, caches) lives as long as the process: out of the
        # cyclic collector's sight, its older generations no longer walk all of it each time.
        gc.freeze()
        try:
            await server.serve(sockets=sockets)
        finally:
            compactor.cancel()
            expiry.cancel()
            await asyncio.wait({compactor, expiry})
            if self.manager is not None:
                await self.manager.stop()
            await self.hub.stop()
            self.store.close()

    async def _expire_forever(self, ledger: Ledger) -> None:
        """Close the bank's allocations past their end (what is left of them expires)."""
        actor = Actor("system:slurmlink", "server")
        while True:
            await asyncio.sleep(BANK_EXPIRY_INTERVAL)
            try:
                await anyio.to_thread.run_sync(lambda: ledger.expire_due(actor=actor))
            except Exception:
                log.exception("closing ended bank allocations failed")

    async def _compact_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.compaction_interval)
            try:
                await anyio.to_thread.run_sync(self.store.compact, self.config.compaction_retain)
            except Exception:
                log.exception("compaction failed")


class _Server(uvicorn.Server):
    """uvicorn's server, ending the open watches first when it shuts down.

    A watch is a response that does not end: uvicorn waited its whole graceful-shutdown timeout for
    each, then cancelled it and logged the cancellation as an error with a traceback."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._exit_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)

    async def main_loop(self) -> None:
        """uvicorn's housekeeping loop, woken once a second instead of ten times.

        uvicorn polls ``should_exit`` every 0.1 s, the idle server's main cost; here a signal wakes
        the loop at once (``handle_exit``), and the once-a-second tick keeps the Date header fresh.
        """
        self._exit_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0  # uvicorn's on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exit_requested.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Through the loop's wake-up pipe: a signal handler may interrupt the loop anywhere.
        if self._exit_requested is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._exit_requested.set)


def keep_signals_for_cleanup() -> None:
    """Let the server stop cleanly on SIGTERM/SIGINT.

    uvicorn handles the signal while it serves and, once it has stopped, raises it again for the
    handler that was there before; with Python's defaults that kills the process (SIGTERM) before
    the controllers are stopped, so their children (a ``scontrol`` waiting for an unreachable
    slurmctld) outlived the server and the store was never closed. With these handlers the signal
    raised again does nothing and ``run`` goes on to its cleanup.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: None)


def certificate_hosts(cfg: ServerConfig) -> list[str]:
    """What the server certificate names: the listen addresses, the ``--host`` names."""
    return [cfg.client_host, cfg.host, *cfg.extra_hosts, *cfg.hosts]


def listening_sockets(addresses: list[str]) -> list[socket.socket]:
    """Bound TCP sockets for every ``HOST:PORT`` (uvicorn serves them all), one per address the host
    resolves to, as asyncio's ``create_server`` binds them; exits saying which one failed."""
    sockets: list[socket.socket] = []
    for address in dict.fromkeys(addresses):
        host, port = split_listen(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            infos, error = [], exc.strerror
        else:
            error = None
        for family, kind, proto, _name, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc.strerror or str(exc)
                break
            sock.set_inheritable(True)
            sockets.append(sock)
        if error is not None:
            for other in sockets:
                other.close()
            log.error("cannot listen on %s: %s", address, error)
            sys.exit(3)  # as uvicorn's STARTUP_FAILURE
    return sockets


def election_config(cfg: ServerConfig) -> LeaderElectionConfig | None:
    """In-process controllers elect a leader when the store is shared (PostgreSQL), so several
    ``serve`` processes on one database never act twice. On SQLite there is one server per state
    directory, and electing would only make a restarted server wait out its predecessor's lease."""
    if cfg.store_url.startswith("sqlite"):
        return None
    return LeaderElectionConfig(LEASE_NAME, cfg.system_namespace, default_identity())


def bridge_settings(cfg: ServerConfig) -> BridgeSettings | None:
    """The job bridge's settings from the server's, None when the bridge is off.

    The job root must be given: it has to be on a file system the compute nodes share and reachable
    by every job user, which the server's own 0700 state directory is not.
    """
    if not cfg.bridge:
        return None
    if not cfg.bridge_root:
        raise ValueError(
            "the job bridge needs bridge_root (--bridge-root): a directory on a file system the "
            "compute nodes share, where each SlurmJob gets its directory"
        )
    conf = cfg.slurm_conf or os.environ.get("SLURM_CONF", "")
    slurm_conf = Path(conf) if conf else None
    overrides = load_partition_config(Path(cfg.partition_config)) if cfg.partition_config else None
    return BridgeSettings(
        cluster=cfg.cluster_name,
        root=Path(cfg.bridge_root),
        uploads=cfg.state_dir / "bridge" / "uploads",
        slurm_conf=slurm_conf,
        interval=cfg.bridge_interval,
        accounting=cfg.bridge_accounting,
        partition_interval=cfg.bridge_partition_interval,
        partition_config=overrides,
        max_upload=cfg.bridge_max_upload,
    )


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def serve(config: ServerConfig) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    if config.nice:
        log.info("lowered CPU priority: %s", lower_cpu_priority(config.nice))
    server = Server(config)
    server.prepare()
    try:
        import uvloop

        uvloop.run(server.run())
    except ImportError:
        asyncio.run(server.run())
