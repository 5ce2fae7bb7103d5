"""What admission code may see: the caller and read access to other objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slurmlink.auth.identity import Identity

if TYPE_CHECKING:
    from slurmlink.apiserver.service import ResourceService


@dataclass
class AdmissionContext:
    """Passed to each strategy hook."""

    service: ResourceService
    identity: Identity | None
    system_namespace: str

    def list_storage(self, group: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of another kind, in storage version (e.g. the DWDirectiveRules); read-only."""
        target = self.service.registry.by_kind(group, kind)
        return self.service.list_cached(target, namespace)
