"""The generic registry calls each kind's strategy hooks in Kubernetes' order, on a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.resources import errors
from slurmlink.resources.access import READ, AccessPolicy, OwnerScope, UnixAccount, default_policy
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, Strategy, field_of
from slurmlink.resources.registry import Registry
from slurmlink.store.sql import SqlStore


class _Spec(BaseModel):
    size: int | None = None
    note: str | None = None


class _Widget(BaseModel):
    spec: _Spec | None = None


class WidgetStrategy(Strategy):
    structure = _Widget
    field_labels = {"spec.size": field_of("spec", "size")}

    def __init__(self) -> None:
        self.calls: list[str] = []

    def validate_name(self, name: str) -> list[Cause]:
        return [] if name.startswith("w-") else [Cause("metadata.name", "Invalid value: must start with w-")]

    def mutate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        self.calls.append("mutate_update")
        new.setdefault("spec", {})["note"] = f"was {old['spec'].get('size')}"

    def validate_delete(self, obj: Obj, ctx: AdmissionContext) -> None:
        self.calls.append("validate_delete")
        if obj["spec"].get("size") == 42:
            raise errors.ApiError(403, "Forbidden", "widgets of size 42 are kept")


STRATEGY = WidgetStrategy()
WIDGET = Kind(
    group="example.slurmlink.io",
    kind="Widget",
    plural="widgets",
    singular="widget",
    namespaced=True,
    versions=("v1",),
    storage_version="v1",
    strategy=STRATEGY,
    access=AccessPolicy(roles=default_policy().roles, user_verbs=READ | frozenset({"create", "delete"})),
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ResourceService]:
    store = SqlStore(f"sqlite:///{tmp_path}/db")
    svc = ResourceService(store, Registry([NAMESPACE, WIDGET]))
    svc.create(NAMESPACE, "v1", None, {"metadata": {"name": "ns"}}, SYSTEM)
    STRATEGY.calls.clear()
    yield svc
    store.close()


def widget(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "example.slurmlink.io/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_the_kinds_name_rule_applies(service: ResourceService) -> None:
    with pytest.raises(errors.ApiError) as info:
        service.create(WIDGET, "v1", "ns", widget("bad"), SYSTEM)
    assert info.value.code == 422 and "must start with w-" in info.value.message


def test_mutate_update_runs_on_every_update(service: ResourceService) -> None:
    service.create(WIDGET, "v1", "ns", widget("w-1", size=1), SYSTEM)
    out = service.patch(
        WIDGET, "v1", "ns", "w-1", "application/merge-patch+json", {"spec": {"size": 2}}, SYSTEM
    )
    assert out["spec"] == {"size": 2, "note": "was 1"}
    assert STRATEGY.calls == ["mutate_update"]


def test_validate_delete_can_refuse(service: ResourceService) -> None:
    service.create(WIDGET, "v1", "ns", widget("w-42", size=42), SYSTEM)
    with pytest.raises(errors.ApiError) as info:
        service.delete(WIDGET, "v1", "ns", "w-42", SYSTEM)
    assert info.value.code == 403
    assert service.get(WIDGET, "v1", "ns", "w-42")["spec"]["size"] == 42
    service.create(WIDGET, "v1", "ns", widget("w-7", size=7), SYSTEM)
    service.delete(WIDGET, "v1", "ns", "w-7", SYSTEM)
    assert STRATEGY.calls == ["validate_delete", "validate_delete"]


def test_unknown_fields_pruned_with_warnings_or_refused(service: ResourceService) -> None:
    warnings: list[str] = []
    out = service.create(
        WIDGET,
        "v1",
        "ns",
        widget("w-p", size=1, colour="red"),
        SYSTEM,
        field_validation="Warn",
        warnings=warnings,
    )
    assert out["spec"] == {"size": 1} and warnings == ['unknown field "spec.colour"']
    with pytest.raises(errors.ApiError) as info:
        service.create(WIDGET, "v1", "ns", widget("w-q", colour="red"), SYSTEM, field_validation="Strict")
    assert info.value.code == 400 and 'unknown field "spec.colour"' in info.value.message


def test_declared_field_selectors(service: ResourceService) -> None:
    for size in (1, 2, 2):
        service.create(
            WIDGET,
            "v1",
            "ns",
            {**widget(""), "metadata": {"generateName": "w-"}, "spec": {"size": size}},
            SYSTEM,
        )
    items, _ = service.list(WIDGET, "v1", "ns", field_selector="spec.size=2")
    assert [o["spec"]["size"] for o in items] == [2, 2]
    with pytest.raises(errors.ApiError) as info:
        service.list(WIDGET, "v1", "ns", field_selector="spec.colour=red")
    assert info.value.message == "field label not supported: spec.colour"


def test_owner_scope_limits_what_a_user_reaches(service: ResourceService) -> None:
    alice = OwnerScope(UnixAccount("alice", 5001, 5001), WIDGET.access)
    bob = OwnerScope(UnixAccount("bob", 5002, 5002), WIDGET.access)
    service.create(WIDGET, "v1", "ns", widget("w-a"), SYSTEM, scope=alice)
    service.create(WIDGET, "v1", "ns", widget("w-b"), SYSTEM, scope=bob)
    assert [o["metadata"]["name"] for o in service.list(WIDGET, "v1", "ns", scope=alice)[0]] == ["w-a"]
    with pytest.raises(errors.ApiError) as info:
        service.delete(WIDGET, "v1", "ns", "w-a", SYSTEM, scope=bob)
    assert info.value.code == 403
    assert 'User "bob" cannot delete resource "widgets"' in info.value.message
    service.delete(WIDGET, "v1", "ns", "w-a", SYSTEM, scope=alice)


def test_status_writes_need_a_kind_that_serves_status(service: ResourceService) -> None:
    service.create(WIDGET, "v1", "ns", widget("w-s"), SYSTEM)
    obj = service.get_storage(WIDGET, "ns", "w-s")
    with pytest.raises(errors.ApiError) as info:
        service.update_storage(WIDGET, {**obj, "status": {"x": 1}}, SYSTEM, subresource="status")
    assert info.value.code == 404
