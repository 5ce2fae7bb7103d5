"""The core ``ConfigMap`` kind: named string data, the first kind HPC users create themselves.

Users keep job inputs and settings here (``kubectl create configmap params --from-file=...``), and
own what they create: the ``user`` role sees and changes only its own ConfigMaps. Validation follows
the API server's: keys are config keys, ``binaryData`` is base64, the two may not share a key, an
``immutable`` ConfigMap keeps its data, and the whole object stays under 1 MiB.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from pydantic import BaseModel

from slurmlink import jsonutil
from slurmlink.resources import errors
from slurmlink.resources.access import ALL, AccessPolicy, default_policy
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
#: The API server's limit on a ConfigMap's encoded size.
MAX_BYTES = 1024 * 1024


class ConfigMapObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    data: dict[str, str] | None = None
    binaryData: dict[str, str] | None = None
    immutable: bool | None = None


def _key_causes(section: str, data: object) -> list[Cause]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return [Cause(section, "Invalid value: must be a map of strings")]
    causes: list[Cause] = []
    for key, value in data.items():
        if not key or len(key) > 253 or not _CONFIG_KEY.match(key) or key in (".", ".."):
            causes.append(
                Cause(
                    section,
                    f"Invalid value: {json.dumps(key)}: a valid config key must consist of alphanumeric "
                    "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex "
                    "used for validation is '[-._a-zA-Z0-9]+')",
                )
            )
        if not isinstance(value, str):
            causes.append(Cause(f"{section}[{key}]", "Invalid value: must be a string"))
        elif section == "binaryData":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                causes.append(Cause(f"{section}[{key}]", "Invalid value: must be base64-encoded"))
    return causes


class ConfigMapStrategy(Strategy):
    structure = ConfigMapObject

    def validate_schema(self, obj: Obj) -> list[Cause]:
        causes = _key_causes("data", obj.get("data")) + _key_causes("binaryData", obj.get("binaryData"))
        data, binary = obj.get("data"), obj.get("binaryData")
        if isinstance(data, dict) and isinstance(binary, dict):
            for key in sorted(set(data) & set(binary)):
                causes.append(
                    Cause("data", f"Invalid value: {json.dumps(key)}: duplicate of key present in binaryData")
                )
        immutable = obj.get("immutable")
        if immutable is not None and not isinstance(immutable, bool):
            causes.append(Cause("immutable", "Invalid value: must be a boolean"))
        if len(jsonutil.dumps(obj)) > MAX_BYTES:
            causes.append(Cause("", f"Too long: must have at most {MAX_BYTES} bytes", "FieldValueTooLong"))
        return causes

    def spec_changed(self, new: Obj, old: Obj) -> bool:
        return False  # ConfigMaps have no generation-worthy spec, as in Kubernetes

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        if not old.get("immutable"):
            return
        changed = [
            Cause(field, "Forbidden: field is immutable when `immutable` is set", "FieldValueForbidden")
            for field in ("data", "binaryData", "immutable")
            if new.get(field) != old.get(field)
        ]
        if changed:
            name = str((new.get("metadata") or {}).get("name") or "")
            raise errors.invalid("", "ConfigMap", name, changed)


def _key_count(obj: Obj) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


CONFIG_MAP = Kind(
    group="",
    kind="ConfigMap",
    plural="configmaps",
    singular="configmap",
    namespaced=True,
    versions=("v1",),
    storage_version="v1",
    strategy=ConfigMapStrategy(),
    short_names=("cm",),
    printer_columns=(
        PrinterColumn("Data", "", "integer", "Number of keys", value=_key_count),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
    access=AccessPolicy(roles=default_policy().roles, user_verbs=ALL),
)
