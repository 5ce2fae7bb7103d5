"""Every controller slurmlink runs, in one place: ``slurmlink serve`` and ``slurmlink controller``
both build their runners from ``CONTROLLERS``, so adding a controller is one line here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slurmlink.bridge.controller import Bridge, BridgeSettings
from slurmlink.bridge.controller import reconcilers as bridge_reconcilers
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory
from slurmlink.controllers.bbdriver import BurstBufferDriver
from slurmlink.controllers.gc import GarbageCollector
from slurmlink.controllers.runtime import ControllerRunner, Reconciler
from slurmlink.controllers.storagenodes import DEFAULT_HEARTBEAT_TIMEOUT, StorageHeartbeatReconciler
from slurmlink.controllers.storagepool import StoragePoolReconciler
from slurmlink.controllers.testdriver import TestDriverReconciler
from slurmlink.controllers.workflow import WorkflowReconciler
from slurmlink.resources.catalog import default_registry


@dataclass(frozen=True)
class ControllerSettings:
    """What controllers may be configured with (``serve``'s config, ``slurmlink controller``'s flags)."""

    #: Seconds without a node agent's heartbeat before its Storage is marked Offline.
    node_heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    #: The job bridge's settings; None: the bridge does not run.
    bridge: BridgeSettings | None = None


@dataclass(frozen=True)
class ControllerSpec:
    """How to build one controller: its reconciler(s), its share of the workers, when it runs."""

    name: str
    factory: Callable[[ControllerSettings], Reconciler | Sequence[Reconciler]]
    #: Runs only when the test driver is on (its directive rules exist).
    needs_test_driver: bool = False
    #: Workers as a fraction of ``--workers`` (at least one).
    worker_share: float = 1.0

    def workers(self, total: int) -> int:
        return max(1, int(total * self.worker_share))

    def reconcilers(self, settings: ControllerSettings | None = None) -> list[Reconciler]:
        built = self.factory(settings or ControllerSettings())
        return [built] if isinstance(built, Reconciler) else list(built)


def _job_bridge(settings: ControllerSettings) -> list[Reconciler]:
    """The two SlurmJob kinds' reconcilers over one shared bridge, when it is configured."""
    if settings.bridge is None:
        return []
    return bridge_reconcilers(Bridge(settings.bridge))


def _garbage_collectors(_settings: ControllerSettings) -> list[Reconciler]:
    """One collector per kind served (any kind may own any other)."""
    kinds = [k for k in default_registry().kinds() if "watch" in k.verbs]
    return [GarbageCollector(kind, kinds) for kind in kinds]


CONTROLLERS: tuple[ControllerSpec, ...] = (
    ControllerSpec("workflow", lambda _s: WorkflowReconciler()),
    ControllerSpec(
        "test-driver", lambda _s: TestDriverReconciler(), needs_test_driver=True, worker_share=0.5
    ),
    ControllerSpec("garbage-collector", _garbage_collectors, worker_share=0.25),
    ControllerSpec(
        "storage-heartbeat",
        lambda s: StorageHeartbeatReconciler(timeout=s.node_heartbeat_timeout),
        worker_share=0.25,
    ),
    ControllerSpec("storage-pool", lambda _s: StoragePoolReconciler(), worker_share=0.25),
    ControllerSpec("burst-buffer", lambda _s: BurstBufferDriver(), worker_share=1.0),
    ControllerSpec("job-bridge", _job_bridge, worker_share=2.0),
)


def enabled(*, test_driver: bool) -> list[ControllerSpec]:
    return [spec for spec in CONTROLLERS if test_driver or not spec.needs_test_driver]


def build_runners(
    client: Client,
    informers: InformerFactory,
    *,
    test_driver: bool,
    workers: int = 4,
    settings: ControllerSettings | None = None,
) -> list[ControllerRunner]:
    """One runner per enabled controller, all on ``informers``."""
    return [
        ControllerRunner(client, reconciler, workers=spec.workers(workers), informers=informers)
        for spec in enabled(test_driver=test_driver)
        for reconciler in spec.reconcilers(settings)
    ]
