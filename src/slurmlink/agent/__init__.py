"""The node agent (``slurmlink agent``): on a storage node it makes the node's device ready as its pool,
registers the node's DWS ``Storage`` and heartbeats through a Lease."""
