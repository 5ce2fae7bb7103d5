"""Names the burst-buffer parts share: annotations, finalizers, the placement route.

Kept apart from the store-side code so the gateway and agents (API clients) can use them without
importing the store.
"""

from __future__ import annotations

#: On a DirectiveBreakdown: the pool the directive named (``pool=``), if any.
POOL_ANNOTATION = "slurmlink.io/pool"
#: On a DirectiveBreakdown of ``create_persistent``: the PersistentStorageInstance it fills.
INSTANCE_ANNOTATION = "slurmlink.io/persistent-instance"
#: On the Workflow: the buffers the directives asked for, as the driver's Proposal resolved them (JSON).
BUFFERS_ANNOTATION = "slurmlink.io/buffers"
#: On the Workflow: its copy directives (copy_in, copy_out, stage_in, stage_out), resolved (JSON).
STAGING_ANNOTATION = "slurmlink.io/staging"
#: Held on a ClientMount by the compute node's agent until everything in it is unmounted.
COMPUTE_NODE_FINALIZER = "slurmlink.io/compute-node"

PREFIX = "/storage/v1"
PLACEMENT_PATH = "/namespaces/{namespace}/servers/{name}/placement"


def placement_path(namespace: str, name: str) -> str:
    """Where the workload manager posts ``{"computes": N}`` to place a Servers' storage."""
    return PREFIX + PLACEMENT_PATH.format(namespace=namespace, name=name)


#: ``#DW`` commands of the slurmlink driver.
BUFFER_COMMANDS = frozenset(
    {
        "jobdw",
        "create_persistent",
        "destroy_persistent",
        "persistentdw",
        "copy_in",
        "copy_out",
        "stage_in",
        "stage_out",
        "swap",
    }
)
