"""Every kind slurmlink serves."""

from __future__ import annotations

from slurmlink.resources.configmap import CONFIG_MAP
from slurmlink.resources.coordination import LEASE
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.registry import Registry


def default_registry() -> Registry:
    """A registry holding all kinds."""
    return Registry([NAMESPACE, CONFIG_MAP, WORKFLOW, DW_DIRECTIVE_RULE, COMPUTES, LEASE])
