"""Workflow admission through the real ResourceService on a real SQLite store.

Every rule of upstream's webhooks (specs/dws.md §2.4, §3) and the CRD schema checks that run before
them, driven through ``service.create/patch/replace`` exactly as the HTTP layer calls them, with the
exact code, reason and message of the Status the API returns. Also the mutating webhook's driver
registration and the v1alpha2 <-> v1alpha7 conversion.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.config import ServerConfig
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.group import WORKFLOW_FINALIZER as FINALIZER
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.patching import JSON_PATCH, MERGE
from slurmlink.server import bootstrap
from slurmlink.store.sql import SqlStore

NS = "slurm"
V2 = "v1alpha2"
V7 = "v1alpha7"
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DENIED = 'admission webhook "vworkflow.kb.io" denied the request: '
STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
SUPPORTED_STATES = (
    'supported values: "Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"'
)

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------


def make_service(tmp_path: Path, *, test_driver: bool = True) -> tuple[ResourceService, SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path}/db")
    service = ResourceService(store, default_registry())
    # Upstream's admission semantics with the test driver's rules only.
    bootstrap(service, ServerConfig(state_dir=tmp_path, test_driver=test_driver, burst_buffer_driver=False))
    return service, store


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[ResourceService]:
    """Namespaces plus the test driver's DWDirectiveRule ``rules`` in ``dws-system``."""
    service, store = make_service(tmp_path)
    yield service
    store.close()


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[ResourceService]:
    """Bootstrapped with ``test_driver=False``: namespaces but no DWDirectiveRule at all."""
    service, store = make_service(tmp_path, test_driver=False)
    yield service
    store.close()


def manifest(name: str = "bb12", directives: list[str] | None = None, **spec: Any) -> Obj:
    """The Slurm plugin's Workflow (specs/dws.md §5.2), v1alpha2."""
    body: Obj = {
        "apiVersion": f"dataworkflowservices.github.io/{V2}",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {"origin": "burst_buffer.lua"}},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": list(directives or []),
            "wlmID": "slurm",
            "jobID": "12",
            "userID": 990,
            "groupID": 990,
        },
    }
    body["spec"].update(spec)
    return body


def create(svc: ResourceService, body: Obj, version: str = V2) -> Obj:
    body = dict(body, apiVersion=f"dataworkflowservices.github.io/{version}")
    return svc.create(WORKFLOW, version, NS, body, SYSTEM)


def merge(svc: ResourceService, name: str, patch: Obj, version: str = V2) -> Obj:
    return svc.patch(WORKFLOW, version, NS, name, MERGE, patch, SYSTEM)


def jpatch(svc: ResourceService, name: str, ops: list[Obj], version: str = V2) -> Obj:
    return svc.patch(WORKFLOW, version, NS, name, JSON_PATCH, ops, SYSTEM)


def get(svc: ResourceService, name: str = "bb12", version: str = V2) -> Obj:
    return svc.get(WORKFLOW, version, NS, name)


def error_of(action: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        action()
    return info.value


def assert_denied(action: Callable[[], object], text: str) -> ApiError:
    """A validating-webhook denial as controller-runtime puts it on the wire (specs/dws.md §3)."""
    err = error_of(action)
    assert (err.code, err.reason, err.message) == (403, text, DENIED + text)
    assert err.status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": DENIED + text,
        "reason": text,
        "code": 403,
    }
    return err


def assert_invalid(
    action: Callable[[], object], *causes: tuple[str, str, str], name: str = "bb12"
) -> ApiError:
    """A 422 schema rejection; ``causes`` are (field, message, reason) in order."""
    err = error_of(action)
    texts = [f"{field}: {message}" for field, message, _ in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    assert (err.code, err.reason) == (422, "Invalid")
    assert err.message == f'Workflow.dataworkflowservices.github.io "{name}" is invalid: {summary}'
    assert err.details == {
        "name": name,
        "group": "dataworkflowservices.github.io",
        "kind": "Workflow",
        "causes": [{"reason": r, "message": m, "field": f} for f, m, r in causes],
    }
    return err


def kubectl_text(status: Obj) -> str:
    """What kubectl prints for an error Status (k8s.io/kubectl/pkg/cmd/util/helpers.go ``checkErr``).

    Invalid errors are rebuilt from ``details`` alone (kind, name, causes; ``message`` is ignored),
    one cause inline and several as a ``*`` list; every other reason prints the message.
    """
    reason = status.get("reason") or ""
    if reason == "Invalid":
        details = status.get("details")
        text = "The request is invalid"
        if details is None:
            return text
        if details.get("kind") or details.get("name"):
            text = f"The {details.get('kind', '')} {json.dumps(details.get('name', ''))} is invalid"
        messages: list[str] = []
        for cause in details.get("causes") or []:
            line = f"{cause.get('field', '')}: {cause.get('message', '')}"
            if line not in messages:
                messages.append(line)
        if not messages:
            return text
        if len(messages) == 1:
            return f"{text}: {messages[0]}"
        return f"{text}: \n" + "".join(f"* {m}\n" for m in messages)
    if reason:
        return f"Error from server ({reason}): {status['message']}"
    return f"Error from server: {status['message']}"


def set_status(svc: ResourceService, name: str, **fields: Any) -> Obj:
    """Write status fields on the main resource, as the DWS controller and drivers do."""
    return merge(svc, name, {"status": fields})


def reach(svc: ResourceService, name: str, state: str, *, ready: bool = True) -> Obj:
    """Walk a workflow forward to ``state`` as the WLM and the controller would, one state at a time.

    Every state before ``state`` is left ready; ``state`` itself ends ready or not as asked.
    """
    current = get(svc, name).get("status", {}).get("state") or ""
    start = STATES.index(current) + 1 if current else 0
    obj = get(svc, name)
    for s in STATES[start : STATES.index(state) + 1]:
        if s != "Proposal":
            merge(svc, name, {"spec": {"desiredState": s}})
        done = ready or s != state
        obj = set_status(svc, name, state=s, ready=done, status="Completed" if done else "DriverWait")
    return obj


def drivers_of(obj: Obj) -> list[Obj]:
    return list(obj.get("status", {}).get("drivers") or [])


# --------------------------------------------------------------------------------------------------
# ValidateCreate (specs/dws.md §3), in order
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"])
def test_create_must_start_in_proposal(svc: ResourceService, state: str) -> None:
    assert_denied(
        lambda: create(svc, manifest(desiredState=state)),
        f'Spec.DesiredState: Invalid value: "{state}": desired state must start in Proposal',
    )


def test_create_desired_state_is_checked_before_hurry(svc: ResourceService) -> None:
    assert_denied(
        lambda: create(svc, manifest(desiredState="Teardown", hurry=True)),
        'Spec.DesiredState: Invalid value: "Teardown": desired state must start in Proposal',
    )


def test_create_with_hurry_is_forbidden(svc: ResourceService) -> None:
    assert_denied(
        lambda: create(svc, manifest(hurry=True)),
        "Spec.Hurry: Forbidden: the hurry flag may not be set on creation",
    )


def test_create_hurry_is_checked_before_status_state(svc: ResourceService) -> None:
    body = manifest(hurry=True)
    body["status"] = {"state": "Proposal", "ready": False}
    assert_denied(
        lambda: create(svc, body), "Spec.Hurry: Forbidden: the hurry flag may not be set on creation"
    )


def test_create_with_status_state_is_forbidden(svc: ResourceService) -> None:
    body = manifest()
    body["status"] = {"state": "Proposal", "ready": False}
    assert_denied(
        lambda: create(svc, body), "Status.State: Forbidden: the status state may not be set on creation"
    )


def test_create_status_state_is_checked_before_directives(bare: ResourceService) -> None:
    body = manifest(directives=["#DW Proposal action=wait"])
    body["status"] = {"state": "Setup", "ready": False}
    assert_denied(
        lambda: create(bare, body), "Status.State: Forbidden: the status state may not be set on creation"
    )


def test_create_without_any_ruleset(bare: ResourceService) -> None:
    err = assert_denied(
        lambda: create(bare, manifest(directives=["#DW pool=pool1 capacity=1K"])),
        "unable to find ruleset in namespace: dws-system",
    )
    assert kubectl_text(err.status()) == (
        "Error from server (unable to find ruleset in namespace: dws-system): "
        'admission webhook "vworkflow.kb.io" denied the request: '
        "unable to find ruleset in namespace: dws-system"
    )


def test_create_without_directives_needs_no_ruleset(bare: ResourceService) -> None:
    created = create(bare, manifest(directives=[]))
    assert created["spec"]["dwDirectives"] == []
    assert "drivers" not in created["status"]


def test_create_rule_objects_without_rules_reject_every_directive(bare: ResourceService) -> None:
    """Rule objects exist but hold no rules: upstream's ReadRules succeeds, Validate finds no match."""
    bare.create(
        DW_DIRECTIVE_RULE,
        V7,
        "dws-system",
        {"metadata": {"name": "empty"}, "spec": []},
        SYSTEM,
    )
    assert_denied(
        lambda: create(bare, manifest(directives=["#DW Proposal action=wait"])),
        "invalid directive '#DW Proposal action=wait'",
    )


def test_rule_types_are_checked_when_used(bare: ResourceService) -> None:
    """The CRD does not restrict ``ruleDefs[].type``: an unknown type is stored and only fails a
    directive that has an argument for it."""
    rule = {
        "metadata": {"name": "odd"},
        "spec": [{"command": "odd", "ruleDefs": [{"key": "x", "type": "float"}]}],
    }
    bare.create(DW_DIRECTIVE_RULE, V7, "dws-system", rule, SYSTEM)
    create(bare, manifest("bb1", ["#DW odd"]))
    assert_denied(lambda: create(bare, manifest("bb2", ["#DW odd x=1.5"])), "unsupported rule type 'float'")


def test_rules_in_other_namespaces_do_not_count(bare: ResourceService) -> None:
    rule = {"metadata": {"name": "elsewhere"}, "spec": [{"command": "Proposal", "ruleDefs": []}]}
    bare.create(DW_DIRECTIVE_RULE, V7, "slurm", rule, SYSTEM)
    assert_denied(
        lambda: create(bare, manifest(directives=["#DW Proposal"])),
        "unable to find ruleset in namespace: dws-system",
    )


@pytest.mark.parametrize(
    ("directive", "text"),
    [
        ("#DW Bogus x=y", "invalid directive '#DW Bogus x=y'"),
        ("#DW Proposal", "missing required argument 'action'"),
        ("#DW Proposal message=hello", "missing required argument 'action'"),
        ("#DW Proposal action=complete bogus=1", "unsupported argument 'bogus'"),
        ("#DW Proposal action", "argument 'action' requires value"),
        ("#DW Proposal action=wait message", "argument 'message' requires value"),
        (
            "#DW Proposal action=wait action=error",
            "repeated argument 'action' in directive '#DW Proposal action=wait action=error'",
        ),
        ("DW Proposal action=wait", "missing '#DW' prefix in directive 'DW Proposal action=wait'"),
        ("#dw Proposal action=wait", "missing '#DW' prefix in directive '#dw Proposal action=wait'"),
        ("#DW proposal action=wait", "invalid directive '#DW proposal action=wait'"),
    ],
)
def test_create_directive_errors(svc: ResourceService, directive: str, text: str) -> None:
    assert_denied(lambda: create(svc, manifest(directives=[directive])), text)


def test_create_directive_errors_name_the_first_bad_directive(svc: ResourceService) -> None:
    assert_denied(
        lambda: create(svc, manifest(directives=["#DW Proposal action=wait", "#DW Bogus x=y", "#DW Nope"])),
        "invalid directive '#DW Bogus x=y'",
    )


def test_create_directive_without_command_fails_the_mutating_webhook(svc: ResourceService) -> None:
    """A bare ``#DW`` makes upstream's parser index past the end; the mutating webhook panics first."""
    err = error_of(lambda: create(svc, manifest(directives=["#DW"])))
    text = "panic: runtime error: index out of range [1] with length 1 [recovered]"
    assert (err.code, err.reason) == (500, "")
    assert err.message == f'admission webhook "mworkflow.kb.io" denied the request: {text}'
    assert kubectl_text(err.status()) == f"Error from server: {err.message}"


def test_create_valid_directives_in_both_versions(svc: ResourceService) -> None:
    create(
        svc,
        manifest(
            "bb1", ["#DW Proposal action=complete", "#DW DataIn action=error message=a_b severity=Fatal"]
        ),
    )
    create(svc, manifest("bb2", ["#DW Teardown action=wait"]), version=V7)
    assert [d["watchState"] for d in drivers_of(get(svc, "bb1"))] == ["Proposal", "DataIn"]
    assert [d["watchState"] for d in drivers_of(get(svc, "bb2"))] == ["Teardown"]


def test_any_action_value_validates(svc: ResourceService) -> None:
    """The tester ruleset has no patterns: ``action=dance`` is accepted (and ignored by the driver)."""
    create(svc, manifest(directives=["#DW Setup action=dance severity=Cosmic"]))
    assert drivers_of(get(svc))[0]["watchState"] == "Setup"


# --------------------------------------------------------------------------------------------------
# ValidateUpdate (specs/dws.md §3), in order
# --------------------------------------------------------------------------------------------------


def test_update_hurry_only_in_teardown(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"hurry": True}}),
        "Spec.Hurry: Invalid value: true: the hurry flag may be set only in Teardown",
    )
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "Setup", "hurry": True}}),
        "Spec.Hurry: Invalid value: true: the hurry flag may be set only in Teardown",
    )
    # The plugin's teardown patch (specs/dws.md §5.3 set_desired_state with hurry).
    out = merge(svc, "bb12", {"spec": {"desiredState": "Teardown", "hurry": True}})
    assert out["spec"]["hurry"] is True and out["spec"]["desiredState"] == "Teardown"


def test_update_hurry_is_checked_before_immutable_fields(svc: ResourceService) -> None:
    create(svc, manifest())
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"hurry": True, "wlmID": "flux"}}),
        "Spec.Hurry: Invalid value: true: the hurry flag may be set only in Teardown",
    )


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("Spec.WLMID", {"wlmID": "flux"}),
        ("Spec.JobID", {"jobID": "13"}),
        ("Spec.JobID", {"jobID": 12}),  # IntOrString: the int 12 is not the string "12"
        ("Spec.UserID", {"userID": 991}),
        ("Spec.GroupID", {"groupID": 0}),
        ("Spec.DWDirectives", {"dwDirectives": ["#DW Proposal action=complete"]}),
        ("Spec.DWDirectives", {"dwDirectives": []}),
    ],
)
def test_update_immutable_fields(svc: ResourceService, field: str, change: Obj) -> None:
    create(svc, manifest(directives=["#DW Proposal action=wait"]))
    # Checked even before the controller's first update (state still ""), as upstream does.
    assert_denied(lambda: merge(svc, "bb12", {"spec": change}), f"{field}: Forbidden: field is immutable")
    reach(svc, "bb12", "Proposal")
    assert_denied(lambda: merge(svc, "bb12", {"spec": change}), f"{field}: Forbidden: field is immutable")


def test_update_immutable_fields_in_upstream_order(svc: ResourceService) -> None:
    create(svc, manifest())
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"groupID": 1, "userID": 1, "jobID": "1", "wlmID": "x"}}),
        "Spec.WLMID: Forbidden: field is immutable",
    )
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"groupID": 1, "userID": 1, "jobID": "1"}}),
        "Spec.JobID: Forbidden: field is immutable",
    )
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"groupID": 1, "userID": 1}}),
        "Spec.UserID: Forbidden: field is immutable",
    )


def test_update_mutable_fields(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal", ready=False)
    out = merge(svc, "bb12", {"metadata": {"labels": {"extra": "yes"}}, "spec": {"hurry": False}})
    assert out["metadata"]["labels"] == {"origin": "burst_buffer.lua", "extra": "yes"}
    out = merge(svc, "bb12", {"spec": {"forceReady": True}}, version=V7)
    assert out["spec"]["forceReady"] is True


def test_first_update_allowance_skips_the_driver_rules(svc: ResourceService) -> None:
    """Old state "" and desired Proposal: anything else may change (the controller's first writes)."""
    create(svc, manifest(directives=["#DW Proposal action=wait", "#DW Teardown action=wait"]))
    # Would be "driver cannot be completed without status=Completed" and a changed non-current
    # entry once the state is adopted; the list may even grow.
    entries = drivers_of(get(svc))
    entries[0].update(completed=True, status="Pending")
    entries[1].update(message="changed")
    entries.append(dict(entries[1], dwdIndex=1, watchState="Setup"))
    out = set_status(svc, "bb12", drivers=entries, state="Proposal", ready=False)
    assert drivers_of(out) == entries


def test_first_update_allowance_is_only_for_proposal(svc: ResourceService) -> None:
    create(svc, manifest())
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "Setup"}}),
        'Spec.DesiredState: Invalid value: "Setup": states cannot be skipped',
    )


def _proposal_with_drivers(svc: ResourceService) -> list[Obj]:
    create(svc, manifest(directives=["#DW Proposal action=wait", "#DW Teardown action=wait"]))
    reach(svc, "bb12", "Proposal", ready=False)
    return drivers_of(get(svc))


def test_driver_entry_for_non_current_state_cannot_change(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    for change in ({"status": "Completed"}, {"message": "hi"}, {"taskID": "t"}, {"lastHB": 5}):
        changed = copy.deepcopy(entries)
        changed[1].update(change)
        assert_denied(
            lambda changed=changed: set_status(svc, "bb12", drivers=changed),
            "Status.Drivers[1]: Internal error: driver entry for non-current state cannot be changed",
        )
    assert_denied(
        lambda: jpatch(svc, "bb12", [{"op": "remove", "path": "/status/drivers/1/status"}]),
        "Status.Drivers[1]: Internal error: driver entry for non-current state cannot be changed",
    )


def test_driver_entry_comparison_is_go_deep_equal(svc: ResourceService) -> None:
    """Upstream compares decoded structs: an absent field equals its zero value."""
    entries = _proposal_with_drivers(svc)
    same = copy.deepcopy(entries)
    same[1].update(message="", error="")
    set_status(svc, "bb12", drivers=same, message="touched")
    assert get(svc)["status"]["message"] == "touched"


def test_driver_completed_requires_status_completed(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    entries[0]["completed"] = True
    assert_denied(
        lambda: set_status(svc, "bb12", drivers=entries),
        "Status.Drivers[0]: Internal error: driver cannot be completed without status=Completed",
    )
    assert_denied(
        lambda: jpatch(
            svc, "bb12", [{"op": "replace", "path": "/status/drivers/0/completed", "value": True}]
        ),
        "Status.Drivers[0]: Internal error: driver cannot be completed without status=Completed",
    )


def test_driver_completed_requires_no_error(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    entries[0].update(status="Completed", completed=True, error="TEST FATAL ERROR")
    assert_denied(
        lambda: set_status(svc, "bb12", drivers=entries),
        "Status.Drivers[0]: Internal error: driver cannot be completed when error is present",
    )


def test_driver_cannot_change_from_completed(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    # The seed's release of a waiting driver (dws-test-driver run-complex.sh).
    jpatch(
        svc,
        "bb12",
        [
            {"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"},
            {"op": "replace", "path": "/status/drivers/0/completed", "value": True},
        ],
    )
    assert_denied(
        lambda: jpatch(
            svc, "bb12", [{"op": "replace", "path": "/status/drivers/0/completed", "value": False}]
        ),
        "Status.Drivers[0]: Internal error: driver cannot change from completed state",
    )
    assert entries[0]["completed"] is False


def test_driver_rules_for_current_entries_only(svc: ResourceService) -> None:
    """Upstream ``continue``s after the non-current check: the completion rules are not applied there."""
    body = manifest(directives=["#DW Proposal action=wait", "#DW Teardown action=wait"])
    body["status"] = {
        "ready": False,
        "drivers": [
            {
                "driverID": "legacy",
                "taskID": "",
                "dwdIndex": 1,
                "watchState": "Teardown",
                "lastHB": 0,
                "completed": True,
                "status": "Pending",
            },
        ],
    }
    create(svc, body)
    reach(svc, "bb12", "Proposal", ready=False)
    assert set_status(svc, "bb12", message="fine")["status"]["message"] == "fine"


def test_driver_rules_report_the_first_bad_entry(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    entries[0]["completed"] = True
    entries[1]["status"] = "Error"
    assert_denied(
        lambda: set_status(svc, "bb12", drivers=entries),
        "Status.Drivers[0]: Internal error: driver cannot be completed without status=Completed",
    )


def test_driver_rules_come_before_state_rules(svc: ResourceService) -> None:
    entries = _proposal_with_drivers(svc)
    entries[1]["status"] = "Error"
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "PreRun"}, "status": {"drivers": entries}}),
        "Status.Drivers[1]: Internal error: driver entry for non-current state cannot be changed",
    )


def test_driver_list_may_shrink_but_not_grow(svc: ResourceService) -> None:
    """Upstream indexes the old list with the new list's indices: fewer entries are fine, and an
    extra entry panics the webhook as soon as its old value is looked at."""
    entries = _proposal_with_drivers(svc)
    extra = dict(entries[1], dwdIndex=0, watchState="Setup")
    err = error_of(lambda: set_status(svc, "bb12", drivers=[*entries, extra]))
    assert (err.code, err.reason) == (500, "")
    assert err.message == DENIED + "panic: runtime error: index out of range [2] with length 2 [recovered]"
    # A completed extra entry for the current state is not compared with the old list at all.
    done = dict(entries[0], completed=True, status="Completed")
    grown = set_status(svc, "bb12", drivers=[*entries, done])
    assert len(drivers_of(grown)) == 3
    shrunk = set_status(svc, "bb12", drivers=entries[:1])
    assert drivers_of(shrunk) == entries[:1]


@pytest.mark.parametrize("state", STATES[:-1])
def test_teardown_from_any_state_even_not_ready(svc: ResourceService, state: str) -> None:
    create(svc, manifest())
    reach(svc, "bb12", state, ready=False)
    assert merge(svc, "bb12", {"spec": {"desiredState": "Teardown"}})["spec"]["desiredState"] == "Teardown"


def test_teardown_from_error(svc: ResourceService) -> None:
    create(svc, manifest(directives=["#DW DataIn action=error message=x severity=Fatal"]))
    reach(svc, "bb12", "DataIn", ready=False)
    set_status(svc, "bb12", status="Error", message="DW Directive 0: Reported error: x")
    out = merge(svc, "bb12", {"spec": {"desiredState": "Teardown", "hurry": True}})
    assert out["spec"]["desiredState"] == "Teardown"


def test_same_state_is_a_no_op_even_when_not_ready(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Setup", ready=False)
    before = get(svc)
    after = merge(svc, "bb12", {"spec": {"desiredState": "Setup"}})
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert set_status(svc, "bb12", message="still setting up")["status"]["message"] == "still setting up"


@pytest.mark.parametrize(
    ("current", "earlier"), [("Setup", "Proposal"), ("DataOut", "PreRun"), ("Teardown", "DataOut")]
)
def test_backwards_is_rejected(svc: ResourceService, current: str, earlier: str) -> None:
    create(svc, manifest())
    reach(svc, "bb12", current)
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": earlier}}),
        f'Spec.DesiredState: Invalid value: "{earlier}": DesiredState cannot progress backwards',
    )


def test_skipping_a_state_is_rejected_with_the_plugin_text(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    text = 'Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped'
    err = assert_denied(lambda: merge(svc, "bb12", {"spec": {"desiredState": "PreRun"}}), text)
    # The exact line the plugin's busted test expects from kubectl (specs/dws.md §3).
    assert kubectl_text(err.status()) == (
        'Error from server (Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped): '
        'admission webhook "vworkflow.kb.io" denied the request: '
        'Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped'
    )


def test_skip_is_checked_before_readiness(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal", ready=False)
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "DataIn"}}),
        'Spec.DesiredState: Invalid value: "DataIn": states cannot be skipped',
    )


@pytest.mark.parametrize("current", STATES[:-2])
def test_next_state_needs_the_current_one_ready(svc: ResourceService, current: str) -> None:
    create(svc, manifest())
    reach(svc, "bb12", current, ready=False)
    nxt = STATES[STATES.index(current) + 1]
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": nxt}}),
        f'Status.State: Invalid value: "{current}": current desired state not yet achieved',
    )
    set_status(svc, "bb12", ready=True, status="Completed")
    assert merge(svc, "bb12", {"spec": {"desiredState": nxt}})["spec"]["desiredState"] == nxt


def test_rules_compare_with_the_adopted_state_not_the_desired_one(svc: ResourceService) -> None:
    """The old ``status.state`` is what counts: desired Setup not yet adopted still allows Setup only."""
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    merge(svc, "bb12", {"spec": {"desiredState": "Setup"}})
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "DataIn"}}),
        'Spec.DesiredState: Invalid value: "DataIn": states cannot be skipped',
    )


def taken_on(svc: ResourceService, name: str = "bb12") -> Obj:
    """The controller's finalizer, as it adds it with Proposal: from then on the API adopts states."""
    return merge(svc, name, {"metadata": {"finalizers": [FINALIZER]}})


def test_a_new_desired_state_is_adopted_in_the_same_write(svc: ResourceService) -> None:
    """The request's write already carries the adopted state, not yet achieved (upstream's
    controller would write it next); forceReady is cleared as there."""
    create(svc, manifest())
    taken_on(svc)
    before = reach(svc, "bb12", "Proposal")
    merge(svc, "bb12", {"spec": {"forceReady": True}}, version=V7)
    out = merge(svc, "bb12", {"spec": {"desiredState": "Setup"}}, version=V7)
    st = out["status"]
    assert (st["state"], st["ready"], st["status"], st["message"]) == ("Setup", False, "DriverWait", "")
    assert MICROTIME.match(st["desiredStateChange"])
    assert st["desiredStateChange"] > (before["status"].get("desiredStateChange") or "")
    assert out["spec"]["forceReady"] is False
    # one write: the stored object is the response
    assert get(svc, version=V7)["metadata"]["resourceVersion"] == out["metadata"]["resourceVersion"]


def test_a_refused_transition_adopts_nothing(svc: ResourceService) -> None:
    create(svc, manifest())
    taken_on(svc)
    before = reach(svc, "bb12", "Proposal")
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "PreRun"}}),
        'Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped',
    )
    reach(svc, "bb12", "Setup", ready=False)
    assert_denied(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "DataIn"}}),
        'Status.State: Invalid value: "Setup": current desired state not yet achieved',
    )
    after = get(svc)
    assert after["status"]["state"] == "Setup" and after["status"]["ready"] is False
    assert before["status"]["state"] == "Proposal"


def test_states_are_left_to_the_controller_until_it_has_taken_the_workflow_on(
    svc: ResourceService,
) -> None:
    """Without the controller's finalizer, or while deleting, the controller adopts (as upstream)."""
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    out = merge(svc, "bb12", {"spec": {"desiredState": "Setup"}})
    assert out["status"]["state"] == "Proposal"
    create(svc, manifest("bb13"))
    taken_on(svc, "bb13")
    reach(svc, "bb13", "Setup")
    svc.delete(WORKFLOW, V2, NS, "bb13", SYSTEM)
    out = merge(svc, "bb13", {"spec": {"desiredState": "Teardown"}})
    assert out["metadata"]["deletionTimestamp"] and out["status"]["state"] == "Setup"


def test_replace_goes_through_the_same_rules(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    body = get(svc)
    body["spec"]["desiredState"] = "PreRun"
    assert_denied(
        lambda: svc.replace(WORKFLOW, V2, NS, "bb12", body, SYSTEM),
        'Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped',
    )
    body["spec"]["desiredState"] = "Setup"
    assert svc.replace(WORKFLOW, V2, NS, "bb12", body, SYSTEM)["spec"]["desiredState"] == "Setup"


def test_the_full_happy_path(svc: ResourceService) -> None:
    create(svc, manifest())
    out = reach(svc, "bb12", "Teardown")
    assert out["status"]["state"] == "Teardown" and out["status"]["ready"] is True


# --------------------------------------------------------------------------------------------------
# Schema (422, before the validating webhook)
# --------------------------------------------------------------------------------------------------


def test_unsupported_desired_state_value(svc: ResourceService) -> None:
    create(svc, manifest())
    reach(svc, "bb12", "Proposal")
    message = f'Unsupported value: "prerun": {SUPPORTED_STATES}'
    err = assert_invalid(
        lambda: merge(svc, "bb12", {"spec": {"desiredState": "prerun"}}),
        ("spec.desiredState", message, "FieldValueNotSupported"),
    )
    assert err.message == (
        f'Workflow.dataworkflowservices.github.io "bb12" is invalid: spec.desiredState: {message}'
    )
    # What kubectl makes of the Status body (specs/kube-api-compat.md §7, the plugin's dws-test.lua).
    assert kubectl_text(err.status()) == f'The Workflow "bb12" is invalid: spec.desiredState: {message}'
    assert_invalid(
        lambda: create(svc, manifest("bb13", desiredState="Bogus")),
        ("spec.desiredState", f'Unsupported value: "Bogus": {SUPPORTED_STATES}', "FieldValueNotSupported"),
        name="bb13",
    )


@pytest.mark.parametrize(("field", "value"), [("userID", "bad user"), ("groupID", "bad group")])
def test_ids_must_be_integers(svc: ResourceService, field: str, value: str) -> None:
    message = f'Invalid value: "string": spec.{field} in body must be of type integer: "string"'
    err = assert_invalid(
        lambda: create(svc, manifest(**{field: value})), (f"spec.{field}", message, "FieldValueTypeInvalid")
    )
    assert kubectl_text(err.status()) == f'The Workflow "bb12" is invalid: spec.{field}: {message}'


@pytest.mark.parametrize(
    ("value", "label"), [(True, "boolean"), (1.5, "number"), ([1], "array"), ({}, "object")]
)
def test_job_id_is_int_or_string(svc: ResourceService, value: Any, label: str) -> None:
    """``x-kubernetes-int-or-string`` plus ``anyOf`` in the CRD: the API server's three errors."""
    causes = (
        (
            "spec.jobID",
            f'Invalid value: "{label}": spec.jobID in body must be of type integer,string: "{label}"',
            "FieldValueTypeInvalid",
        ),
        (
            "<nil>",
            'Invalid value: "": "spec.jobID" must validate at least one schema (anyOf)',
            "FieldValueInvalid",
        ),
        (
            "spec.jobID",
            f'Invalid value: "{label}": spec.jobID in body must be of type integer: "{label}"',
            "FieldValueTypeInvalid",
        ),
    )
    err = assert_invalid(lambda: create(svc, manifest(jobID=value)), *causes)
    assert kubectl_text(err.status()) == (
        'The Workflow "bb12" is invalid: \n' + "".join(f"* {f}: {m}\n" for f, m, _ in causes)
    )


@pytest.mark.parametrize("job", ["12", 12, "bad job"])
def test_job_id_accepts_ints_and_any_string(svc: ResourceService, job: Any) -> None:
    assert create(svc, manifest(jobID=job))["spec"]["jobID"] == job


@pytest.mark.parametrize("field", ["desiredState", "dwDirectives", "groupID", "jobID", "userID", "wlmID"])
def test_required_spec_fields(svc: ResourceService, field: str) -> None:
    body = manifest()
    del body["spec"][field]
    assert_invalid(lambda: create(svc, body), (f"spec.{field}", "Required value", "FieldValueRequired"))


def test_several_missing_fields_in_crd_order(svc: ResourceService) -> None:
    body = manifest()
    for field in ("wlmID", "userID", "jobID"):
        del body["spec"][field]
    assert_invalid(
        lambda: create(svc, body),
        ("spec.jobID", "Required value", "FieldValueRequired"),
        ("spec.userID", "Required value", "FieldValueRequired"),
        ("spec.wlmID", "Required value", "FieldValueRequired"),
    )


def test_missing_or_malformed_spec(svc: ResourceService) -> None:
    body = manifest()
    del body["spec"]
    assert_invalid(lambda: create(svc, body), ("spec", "Required value", "FieldValueRequired"))
    body["spec"] = "Proposal"
    assert_invalid(
        lambda: create(svc, body),
        (
            "spec",
            'Invalid value: "string": spec in body must be of type object: "string"',
            "FieldValueTypeInvalid",
        ),
    )


def test_status_schema(svc: ResourceService) -> None:
    create(svc, manifest(directives=["#DW Proposal action=wait"]))
    assert_invalid(
        lambda: jpatch(svc, "bb12", [{"op": "remove", "path": "/status/ready"}]),
        ("status.ready", "Required value", "FieldValueRequired"),
    )
    assert_invalid(
        lambda: jpatch(
            svc, "bb12", [{"op": "replace", "path": "/status/drivers/0/status", "value": "Fatal"}]
        ),
        (
            "status.drivers[0].status",
            'Unsupported value: "Fatal": supported values: "Pending", "Queued", "Running", "Completed", '
            '"TransientCondition", "Error", "DriverWait"',
            "FieldValueNotSupported",
        ),
    )
    assert_invalid(
        lambda: set_status(svc, "bb12", status="Fatal"),
        (
            "status.status",
            'Unsupported value: "Fatal": supported values: '
            '"Completed", "DriverWait", "TransientCondition", "Error"',
            "FieldValueNotSupported",
        ),
    )


def test_schema_errors_come_before_webhook_rules(svc: ResourceService) -> None:
    create(svc, manifest())
    err = error_of(lambda: merge(svc, "bb12", {"spec": {"desiredState": "prerun", "wlmID": "flux"}}))
    assert err.code == 422


# --------------------------------------------------------------------------------------------------
# Mutating admission: driver registration and env (specs/dws.md §2.4)
# --------------------------------------------------------------------------------------------------


def pending(index: int, state: str, driver: str = "tester") -> Obj:
    return {
        "driverID": driver,
        "taskID": "",
        "dwdIndex": index,
        "watchState": state,
        "lastHB": 0,
        "completed": False,
        "status": "Pending",
    }


def test_registration_in_directive_order(svc: ResourceService) -> None:
    dwds = [f"#DW {s} action=wait" for s in reversed(STATES)]
    created = create(svc, manifest(directives=dwds))
    assert drivers_of(created) == [pending(i, s) for i, s in enumerate(reversed(STATES))]
    assert created["status"]["env"] == {"DW_WORKFLOW_NAME": "bb12", "DW_WORKFLOW_NAMESPACE": "slurm"}
    assert created["status"]["ready"] is False
    assert "state" not in created["status"]


def test_registration_for_the_fatal_one_example(svc: ResourceService) -> None:
    dwds = ["#DW Proposal action=error message=TEST_FATAL_ERROR severity=Fatal", "#DW Teardown action=wait"]
    assert drivers_of(create(svc, manifest(directives=dwds))) == [
        pending(0, "Proposal"),
        pending(1, "Teardown"),
    ]


def test_several_rules_and_watch_states(svc: ResourceService) -> None:
    """A directive matched by several rules registers several drivers; the label defaults to the
    rule object's name; each watch state gets its own entry (rules in name order, then spec order)."""
    svc.create(
        DW_DIRECTIVE_RULE,
        V7,
        "dws-system",
        {
            "metadata": {"name": "nnf"},
            "spec": [
                {
                    "command": "jobdw",
                    "watchStates": "Proposal,Setup,Teardown",
                    "ruleDefs": [{"key": "^capacity$", "type": "string", "isRequired": True}],
                },
                {
                    "command": "Setup",
                    "watchStates": "DataIn",
                    "driverLabel": "mover",
                    "ruleDefs": [{"key": ".*", "type": "string"}],
                },
            ],
        },
        SYSTEM,
    )
    created = create(svc, manifest(directives=["#DW jobdw capacity=1GiB", "#DW Setup action=complete"]))
    assert [(d["driverID"], d["dwdIndex"], d["watchState"]) for d in drivers_of(created)] == [
        ("nnf", 0, "Proposal"),
        ("nnf", 0, "Setup"),
        ("nnf", 0, "Teardown"),
        ("mover", 1, "DataIn"),
        ("tester", 1, "Setup"),
    ]


def test_existing_entries_are_kept_and_not_registered_twice(svc: ResourceService) -> None:
    body = manifest(directives=["#DW Proposal action=wait", "#DW Setup action=wait"])
    body["status"] = {"ready": False, "drivers": [dict(pending(0, "Proposal"), taskID="mine")]}
    created = create(svc, body)
    assert drivers_of(created) == [dict(pending(0, "Proposal"), taskID="mine"), pending(1, "Setup")]


def test_env_names_are_always_set(svc: ResourceService) -> None:
    body = manifest()
    body["status"] = {"ready": False, "env": {"DW_WORKFLOW_NAME": "spoofed", "DW_JOB_STRIPED": "/mnt"}}
    assert create(svc, body)["status"]["env"] == {
        "DW_WORKFLOW_NAME": "bb12",
        "DW_WORKFLOW_NAMESPACE": "slurm",
        "DW_JOB_STRIPED": "/mnt",
    }


def test_null_status_is_the_zero_status(svc: ResourceService) -> None:
    body = manifest(directives=["#DW Proposal action=wait"])
    body["status"] = None
    status = create(svc, body)["status"]
    assert status["ready"] is False
    assert status["env"]["DW_WORKFLOW_NAME"] == "bb12"
    assert drivers_of({"status": status}) == [pending(0, "Proposal")]


def test_registration_only_at_creation(svc: ResourceService) -> None:
    create(svc, manifest("bb1", ["#DW Proposal action=wait"]))
    rule = svc.get_storage(DW_DIRECTIVE_RULE, "dws-system", "rules")
    for spec in rule["spec"]:
        if spec["command"] == "Proposal":
            spec["watchStates"] = "Proposal,Teardown"
    svc.update_storage(DW_DIRECTIVE_RULE, rule, SYSTEM)
    # Updates of the existing workflow never register anything.
    reach(svc, "bb1", "Proposal", ready=False)
    merge(svc, "bb1", {"metadata": {"labels": {"touched": "yes"}}})
    assert drivers_of(get(svc, "bb1")) == [pending(0, "Proposal")]
    # A new workflow sees the changed rule.
    create(svc, manifest("bb2", ["#DW Proposal action=wait"]))
    assert drivers_of(get(svc, "bb2")) == [pending(0, "Proposal"), pending(0, "Teardown")]


# --------------------------------------------------------------------------------------------------
# v1alpha2 <-> v1alpha7
# --------------------------------------------------------------------------------------------------

HUB_ONLY = {
    "spec": {"forceReady": True},
    "status": {
        "requires": ["copy-offload"],
        "workflowToken": {"secretName": "tok", "secretNamespace": "slurm"},
    },
}


def _hub_fields(obj: Obj) -> tuple[Any, Any, Any]:
    return (
        obj["spec"].get("forceReady"),
        obj["status"].get("requires"),
        obj["status"].get("workflowToken"),
    )


def test_v1alpha2_reads_hide_the_newer_fields(svc: ResourceService) -> None:
    created = create(svc, manifest())
    assert created["apiVersion"] == "dataworkflowservices.github.io/v1alpha2"
    assert "forceReady" not in created["spec"]
    stored = get(svc, version=V7)
    assert stored["apiVersion"] == "dataworkflowservices.github.io/v1alpha7"
    assert stored["spec"]["forceReady"] is False and stored["spec"]["hurry"] is False
    merge(svc, "bb12", HUB_ONLY, version=V7)
    assert _hub_fields(get(svc, version=V7)) == (True, ["copy-offload"], HUB_ONLY["status"]["workflowToken"])
    old = get(svc, version=V2)
    assert _hub_fields(old) == (None, None, None)
    items, _ = svc.list(WORKFLOW, V2, NS)
    assert [_hub_fields(o) for o in items] == [(None, None, None)]


def test_v1alpha2_writes_keep_the_newer_fields(svc: ResourceService) -> None:
    create(svc, manifest(directives=["#DW Proposal action=wait"]))
    merge(svc, "bb12", HUB_ONLY, version=V7)
    expected = (True, ["copy-offload"], HUB_ONLY["status"]["workflowToken"])
    # merge patch, JSON patch and PUT of the v1alpha2 shape
    merge(svc, "bb12", {"metadata": {"labels": {"a": "1"}}, "status": {"message": "m"}})
    assert _hub_fields(get(svc, version=V7)) == expected
    jpatch(svc, "bb12", [{"op": "add", "path": "/status/drivers/0/message", "value": "x"}])
    assert _hub_fields(get(svc, version=V7)) == expected
    body = get(svc)
    body["metadata"]["labels"]["b"] = "2"
    svc.replace(WORKFLOW, V2, NS, "bb12", body, SYSTEM)
    stored = get(svc, version=V7)
    assert _hub_fields(stored) == expected
    assert stored["metadata"]["labels"] == {"origin": "burst_buffer.lua", "a": "1", "b": "2"}
    # v1alpha2 has no such fields: what a v1alpha2 client sends for them is dropped.
    merge(svc, "bb12", {"spec": {"forceReady": False}, "status": {"requires": []}})
    assert _hub_fields(get(svc, version=V7)) == expected


def test_v1alpha2_create_ignores_newer_fields(svc: ResourceService) -> None:
    body = manifest(forceReady=True)
    body["status"] = {"ready": False, "requires": ["x"]}
    create(svc, body)
    stored = get(svc, version=V7)
    assert stored["spec"]["forceReady"] is False
    assert "requires" not in stored["status"]
    body = manifest("bb13", forceReady=True)
    assert create(svc, body, version=V7)["spec"]["forceReady"] is True
