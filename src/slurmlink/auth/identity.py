"""Who a request is from: the one shape shared by certificate, token and role checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """An authenticated user and the groups it belongs to (Kubernetes' user/groups model)."""

    user: str
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Coerce ``groups`` to a tuple so identities stay hashable even if built from a list."""
        if not isinstance(self.groups, tuple):
            object.__setattr__(self, "groups", tuple(self.groups))
