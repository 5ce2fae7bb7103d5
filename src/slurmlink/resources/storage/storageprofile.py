"""``slurmlink.io/v1`` ``StorageProfile``: how file systems of each type are made and mounted.

One section per file-system type (``xfs``, ``gluster``, ``raw``, ``dir``), each optional:

- ``mkfsOptions`` (xfs): extra arguments for ``mkfs.xfs``, one argument per item;
- ``volumeOptions`` (gluster): ``gluster volume set`` options, name to value;
- ``mountOptions`` (all): mount options, one per item (joined with commas for ``mount -o``).

A pool names its profile (``StoragePool.spec.profile``); one without uses the profile marked
``spec.default: true``. At most one profile is the default: making a second one the default is
refused, naming the current one. (Two creates racing on PostgreSQL could both pass that check;
:func:`default_profile` then picks the oldest.)

Cluster-scoped, like the pools that use it: a site has one set of profiles, not one per namespace.
Read by the workload manager and viewers, written by the admin.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.access import default_policy
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.dws.common import Open, section_causes
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy
from slurmlink.resources.storage.group import GROUP, VERSION

#: The file-system sections a profile has.
SECTIONS = ("xfs", "gluster", "raw", "dir")
_MOUNT_OPTION = re.compile(r"^[^,\s]+$")


class MountOnly(Open):
    mountOptions: list[StrictStr] | None = None


class XfsOptions(Open):
    mkfsOptions: list[StrictStr] | None = None
    mountOptions: list[StrictStr] | None = None


class GlusterOptions(Open):
    mountOptions: list[StrictStr] | None = None
    volumeOptions: dict[str, StrictStr] | None = None


class StorageProfileSpec(Open):
    default: bool = False
    dir: MountOnly | None = None
    gluster: GlusterOptions | None = None
    raw: MountOnly | None = None
    xfs: XfsOptions | None = None


class StorageProfileObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: StorageProfileSpec | None = None


def is_default(obj: Obj) -> bool:
    spec = obj.get("spec")
    return isinstance(spec, dict) and spec.get("default") is True


def default_profile(profiles: list[Obj]) -> Obj | None:
    """The default profile among ``profiles``: the one marked default (the oldest, should there be two)."""
    marked = [p for p in profiles if is_default(p)]
    if not marked:
        return None
    return min(
        marked, key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), p["metadata"]["name"])
    )


def _option_causes(spec: Obj) -> list[Cause]:
    causes: list[Cause] = []
    for section in SECTIONS:
        part = spec.get(section)
        if not isinstance(part, dict):
            continue
        for index, option in enumerate(part.get("mountOptions") or []):
            if not _MOUNT_OPTION.match(option):
                causes.append(
                    Cause(
                        f"spec.{section}.mountOptions[{index}]",
                        f"Invalid value: {json.dumps(option)}: one mount option per item, without commas "
                        "or blanks",
                    )
                )
        for index, arg in enumerate(part.get("mkfsOptions") or []):
            if not arg:
                causes.append(
                    Cause(f"spec.{section}.mkfsOptions[{index}]", 'Invalid value: "": must not be empty')
                )
        for key in part.get("volumeOptions") or {}:
            if not key or not _MOUNT_OPTION.match(key):
                causes.append(
                    Cause(
                        f"spec.{section}.volumeOptions",
                        f"Invalid value: {json.dumps(key)}: a volume option name has no commas or blanks",
                    )
                )
    return causes


class StorageProfileStrategy(Strategy):
    structure = StorageProfileObject

    def default(self, obj: Obj) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("default", False)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        causes = section_causes(obj, {"spec": StorageProfileSpec})
        if causes:
            return causes
        return _option_causes(obj["spec"])

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        self._one_default(obj, ctx)

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        if not is_default(old):
            self._one_default(new, ctx)

    @staticmethod
    def _one_default(obj: Obj, ctx: AdmissionContext) -> None:
        if not is_default(obj):
            return
        name = obj["metadata"]["name"]
        others = sorted(
            o["metadata"]["name"]
            for o in ctx.list_storage(GROUP, "StorageProfile", None)
            if is_default(o) and o["metadata"]["name"] != name
        )
        if others:
            raise errors.invalid(
                GROUP,
                "StorageProfile",
                name,
                [
                    Cause(
                        "spec.default",
                        f'Invalid value: true: StorageProfile "{others[0]}" is already the default; '
                        "at most one profile may be the default (set spec.default to false on "
                        f'"{others[0]}" first)',
                    )
                ],
            )


def _sections(obj: Obj) -> str:
    spec = obj.get("spec") or {}
    return ",".join(s for s in SECTIONS if isinstance(spec.get(s), dict)) or "<none>"


STORAGE_PROFILE = Kind(
    group=GROUP,
    kind="StorageProfile",
    plural="storageprofiles",
    singular="storageprofile",
    namespaced=False,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=StorageProfileStrategy(),
    short_names=("profile",),
    access=default_policy(),
    printer_columns=(
        PrinterColumn("DEFAULT", ".spec.default", "boolean", "The profile of pools that name none"),
        PrinterColumn("TYPES", ".spec", "string", "File-system types it has options for", value=_sections),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
