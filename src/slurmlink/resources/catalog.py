"""Every kind slurmlink serves."""

from __future__ import annotations

from slurmlink.resources.bridge.partition import PARTITION
from slurmlink.resources.bridge.slurmjob import SLURM_JOB
from slurmlink.resources.bridge.wlmjob import WLM_SLURM_JOB
from slurmlink.resources.configmap import CONFIG_MAP
from slurmlink.resources.coordination import LEASE
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.dws.clientmount import CLIENT_MOUNT
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.storage import STORAGE
from slurmlink.resources.dws.systemconfiguration import SYSTEM_CONFIGURATION
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.registry import Registry
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION
from slurmlink.resources.storage.storagepool import STORAGE_POOL
from slurmlink.resources.storage.storageprofile import STORAGE_PROFILE


def default_registry() -> Registry:
    """A registry holding all kinds."""
    return Registry(
        [
            NAMESPACE,
            CONFIG_MAP,
            WORKFLOW,
            DW_DIRECTIVE_RULE,
            COMPUTES,
            DIRECTIVE_BREAKDOWN,
            SERVERS,
            STORAGE,
            CLIENT_MOUNT,
            PERSISTENT_STORAGE_INSTANCE,
            SYSTEM_CONFIGURATION,
            LEASE,
            STORAGE_POOL,
            STORAGE_PROFILE,
            STORAGE_ALLOCATION,
            DATA_MOVEMENT,
            SLURM_JOB,
            PARTITION,
            WLM_SLURM_JOB,
        ]
    )
