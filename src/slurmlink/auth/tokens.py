"""Bearer tokens for clients that cannot present certificates, stored only as SHA-256 hashes.

The file is shared between the server (lookups) and CLI invocations (issue/revoke), so every change
is a locked read-modify-write with an atomic replace, and lookups reload when the file changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmlink.auth.identity import Identity
from slurmlink.auth.pki import atomic_write_bytes, file_lock

_FORMAT_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


class TokenStoreError(ValueError):
    """The token file exists but cannot be understood; refuse rather than guess (fail closed)."""


@dataclass(frozen=True)
class _Entry:
    """One issued token: its hash, who it authenticates and when it was issued."""

    sha256: str
    identity: Identity
    created: str


def _hash(token: str) -> str:
    """Hex SHA-256 of a token; tokens are 256-bit random, so an unsalted fast hash is sufficient."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Tokens in one JSON file (mode 0600), safe to share between processes."""

    def __init__(self, path: Path) -> None:
        """Use ``path`` (e.g. ``state_dir/tokens.json``); it is created on the first ``issue``."""
        self.path = path
        self._lock_path = path.with_name(f".{path.name}.lock")
        self._mutex = threading.Lock()
        self._entries: list[_Entry] = []
        self._stamp: tuple[int, int, int] | None = None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """Identify the file's current version; ``os.replace`` gives a new inode, so edits show up."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> list[_Entry]:
        """Parse the file from disk; a missing file means no tokens."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            entries = [
                _Entry(
                    sha256=str(item["sha256"]),
                    identity=Identity(str(item["user"]), tuple(str(g) for g in item.get("groups", []))),
                    created=str(item.get("created", "")),
                )
                for item in doc["tokens"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenStoreError(f"{self.path}: malformed token file: {exc}") from exc
        for entry in entries:
            if not _HEX64.fullmatch(entry.sha256):
                raise TokenStoreError(
                    f"{self.path}: malformed token file: bad hash for {entry.identity.user!r}"
                )
        return entries

    def _refresh(self) -> list[_Entry]:
        """Return cached entries, re-reading the file only if another process replaced it."""
        stamp = self._file_stamp()
        if stamp != self._stamp or stamp is None:
            self._entries = self._read()
            self._stamp = stamp
        return self._entries

    def _write(self, entries: list[_Entry]) -> None:
        """Persist ``entries`` atomically and adopt them as the cache."""
        doc: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "tokens": [
                {
                    "sha256": e.sha256,
                    "user": e.identity.user,
                    "groups": list(e.identity.groups),
                    "created": e.created,
                }
                for e in entries
            ],
        }
        atomic_write_bytes(self.path, json.dumps(doc, indent=2).encode("utf-8") + b"\n", 0o600)
        self._entries = entries
        self._stamp = self._file_stamp()

    def issue(self, user: str, groups: list[str]) -> str:
        """Create a token for ``user``/``groups``; the plaintext is returned once and never stored."""
        if not user:
            raise ValueError("token needs a non-empty user name")
        token = secrets.token_urlsafe(32)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        entry = _Entry(sha256=_hash(token), identity=Identity(user, tuple(groups)), created=created)
        with self._mutex, file_lock(self._lock_path):
            self._stamp = None  # always re-read under the lock so concurrent issuers don't lose tokens
            self._write([*self._refresh(), entry])
        return token

    def lookup(self, token: str) -> Identity | None:
        """The identity a token was issued to, or ``None``; compares every hash in constant time."""
        if not token:
            return None
        digest = _hash(token)
        with self._mutex:
            entries = self._refresh()
        found: Identity | None = None
        for entry in entries:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry.identity
        return found

    def revoke(self, user: str) -> int:
        """Delete every token of ``user``; returns how many were removed."""
        with self._mutex, file_lock(self._lock_path):
            self._stamp = None
            entries = self._refresh()
            kept = [e for e in entries if e.identity.user != user]
            removed = len(entries) - len(kept)
            if removed:
                self._write(kept)
        return removed
