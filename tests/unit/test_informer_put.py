"""SharedInformer.put: what this process wrote goes into the cache; the same copy again changes nothing.

A storage agent puts the Storage it just reconciled, and its handler wakes its loop: if putting the copy
the cache already holds notified the handler, the agent would spin forever on an idle node.
"""

from __future__ import annotations

from typing import Any

from slurmlink.client.informer import SharedInformer
from slurmlink.resources.dws.storage import STORAGE


def _storage(rv: str, status: str = "Ready") -> dict[str, Any]:
    return {
        "metadata": {"name": "s1", "namespace": "default", "resourceVersion": rv},
        "status": {"status": status},
    }


def test_put_notifies_for_new_and_changed_objects_only() -> None:
    informer = SharedInformer(client=None, kind=STORAGE, namespace="default")  # type: ignore[arg-type]
    seen: list[tuple[str, str]] = []
    informer.add_handler(lambda kind, new, _old: seen.append((kind, new["metadata"]["resourceVersion"])))
    informer.put(_storage("5"))
    informer.put(_storage("5"))  # the copy it holds: nothing
    informer.put(_storage("4"))  # older: nothing
    informer.put(_storage("6", "Offline"))
    assert seen == [("ADDED", "5"), ("MODIFIED", "6")]
    assert informer.get("default", "s1") == _storage("6", "Offline")
