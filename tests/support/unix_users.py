"""Real Unix accounts for tests of the ``user`` role (created with useradd, as root)."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest


def ensure_unix_user(login: str) -> pwd.struct_passwd:
    """The account ``login``, created as a system user without a home if it does not exist yet.

    Skips the test when not root (useradd needs it); the accounts are left in place for later runs.
    """
    try:
        return pwd.getpwnam(login)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.skip(f"creating the Unix user {login} needs root")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", login],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(login)
