"""Discovery documents (``/api``, ``/apis``, group and version resource lists) and ``/openapi/v2``."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from slurmlink import __version__
from slurmlink.resources.kind import Kind
from slurmlink.resources.registry import Registry


def _hash(kind: Kind) -> str:
    return base64.b64encode(
        hashlib.sha256(f"{kind.group}/{kind.storage_version}/{kind.kind}".encode()).digest()[:8]
    ).decode()


def resource_entry(kind: Kind) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": list(kind.verbs),
        "storageVersionHash": _hash(kind),
    }
    if kind.short_names:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories:
        entry["categories"] = list(kind.categories)
    return entry


def status_entry(kind: Kind) -> dict[str, Any]:
    return {
        "name": f"{kind.plural}/status",
        "singularName": "",
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": ["get", "patch", "update"],
    }


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def core_resources(registry: Registry) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for kind in registry.kinds():
        if not kind.group:
            resources.append(resource_entry(kind))
            if kind.strategy.serves_status:
                resources.append(status_entry(kind))
    return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}


def group_document(registry: Registry, group: str) -> dict[str, Any]:
    versions = registry.group_versions(group)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def group_list(registry: Registry) -> dict[str, Any]:
    groups = [group_document(registry, g) for g in registry.groups()]
    for g in groups:
        g.pop("kind")
        g.pop("apiVersion")
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def version_resources(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    kinds = [k for k in registry.kinds() if k.group == group and version in k.versions]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for kind in kinds:
        resources.append(resource_entry(kind))
        if kind.strategy.serves_status:
            resources.append(status_entry(kind))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}",
        "resources": resources,
    }


def version_info() -> dict[str, Any]:
    return {
        "major": "1",
        "minor": "28",
        "gitVersion": f"v1.28.0+slurmlink-{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
    }


#: ``/openapi/v2`` answer. A zero-length body is a valid empty protobuf Document, so kubectl skips
#: client-side schema checks and the server's own validation (with DWS's error texts) is what users see.
OPENAPI_V2_BODY = b""
OPENAPI_V2_MEDIA_TYPE = "application/octet-stream"
