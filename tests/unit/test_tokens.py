"""Bearer token store: hashes only on disk, cross-process visibility, revocation, fail-closed parsing."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from pathlib import Path

import pytest

from slurmlink.auth.identity import Identity
from slurmlink.auth.tokens import TokenStore, TokenStoreError


def test_issue_and_lookup(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("alice", ["admins", "users"])
    assert len(token) >= 43
    assert store.lookup(token) == Identity("alice", ("admins", "users"))
    assert store.lookup(token + "x") is None
    assert store.lookup("") is None
    assert store.issue("alice", []) != token


def test_file_holds_only_hashes_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = TokenStore(path).issue("alice", ["g"])
    text = path.read_text()
    assert token not in text
    assert json.loads(text)["tokens"][0]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_file_means_no_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "absent.json")
    assert store.lookup("anything") is None
    assert store.revoke("alice") == 0
    assert not (tmp_path / "absent.json").exists()


def test_tokens_from_another_instance_are_seen(tmp_path: Path) -> None:
    server = TokenStore(tmp_path / "tokens.json")
    cli = TokenStore(tmp_path / "tokens.json")
    assert server.lookup("nope") is None  # primes the server's cache with "no file"
    first = cli.issue("alice", [])
    assert server.lookup(first) == Identity("alice")
    second = cli.issue("bob", ["ops"])
    assert server.lookup(second) == Identity("bob", ("ops",))
    assert cli.revoke("alice") == 1
    assert server.lookup(first) is None, "revocation by another process must take effect"
    assert server.lookup(second) == Identity("bob", ("ops",))


def test_concurrent_issuers_do_not_lose_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    stores = [TokenStore(path) for _ in range(4)]
    issued: list[str] = []
    guard = threading.Lock()

    def work(store: TokenStore, n: int) -> None:
        for i in range(10):
            token = store.issue(f"user{n}-{i}", [])
            with guard:
                issued.append(token)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = TokenStore(path)
    assert len(issued) == 40
    assert all(fresh.lookup(token) is not None for token in issued)


def test_revoke_removes_all_of_a_user(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    a1, a2 = store.issue("alice", []), store.issue("alice", ["x"])
    b = store.issue("bob", [])
    assert store.revoke("alice") == 2
    assert store.revoke("alice") == 0
    assert store.lookup(a1) is None and store.lookup(a2) is None
    assert store.lookup(b) == Identity("bob")


def test_corrupt_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token = store.issue("alice", [])
    path.write_text("{not json")
    with pytest.raises(TokenStoreError, match=str(path)):
        store.lookup(token)
    with pytest.raises(TokenStoreError):
        store.issue("bob", [])
    assert path.read_text() == "{not json", "a corrupt file must not be overwritten"


def test_issue_rejects_empty_user(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="user"):
        TokenStore(tmp_path / "t.json").issue("", [])
