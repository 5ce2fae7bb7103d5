"""The set of kinds this server serves, looked up by URL parts."""

from __future__ import annotations

from collections.abc import Iterable

from slurmlink.resources.kind import Kind


class Registry:
    """Kinds by (group, version, plural) and by (group, kind)."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: list[Kind] = []
        self._by_path: dict[tuple[str, str, str], Kind] = {}
        self._by_kind: dict[tuple[str, str], Kind] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: Kind) -> None:
        self._kinds.append(kind)
        for version in kind.versions:
            self._by_path[(kind.group, version, kind.plural)] = kind
        self._by_kind[(kind.group, kind.kind)] = kind

    def lookup(self, group: str, version: str, plural: str) -> Kind | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, group: str, kind: str) -> Kind:
        return self._by_kind[(group, kind)]

    def kinds(self) -> list[Kind]:
        return list(self._kinds)

    def groups(self) -> dict[str, list[Kind]]:
        """Named API groups (the core group is served under ``/api``, not here)."""
        out: dict[str, list[Kind]] = {}
        for kind in self._kinds:
            if kind.group:
                out.setdefault(kind.group, []).append(kind)
        return out

    def group_versions(self, group: str) -> list[str]:
        """Served versions of a group, newest first (Kubernetes version priority)."""
        versions = {v for k in self._kinds if k.group == group for v in k.versions}
        return sorted(versions, key=version_priority, reverse=True)


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes ordering: GA > beta > alpha, higher numbers first within a level."""
    import re

    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (-1, 0, 0)
    major = int(m.group(1))
    level = {"alpha": 0, "beta": 1, None: 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (level, major, minor)
