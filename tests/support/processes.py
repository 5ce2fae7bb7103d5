"""Which processes still belong to a directory: what "nothing left behind" means in the tests."""

from __future__ import annotations

import os
from pathlib import Path


def _references(pid: int, needle: bytes) -> str | None:
    """Why process ``pid`` belongs to the directory ``needle`` (cmdline, cwd or environment), or None."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes()
        command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        if needle in cmdline:
            return f"cmdline {command}"
        cwd = os.fsencode(os.readlink(proc / "cwd"))
        if cwd == needle or cwd.startswith(needle + b"/"):
            return f"cwd {os.fsdecode(cwd)}: {command}"
        if needle in (proc / "environ").read_bytes():
            return f"environment: {command}"
    except OSError:  # gone meanwhile, or a kernel thread
        return None
    return None


def processes_referencing(directory: Path) -> dict[int, str]:
    """Live processes whose command line, working directory or environment names ``directory``."""
    needle = os.fsencode(str(Path(directory).absolute()))
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        why = _references(int(entry.name), needle)
        if why is not None:
            found[int(entry.name)] = why
    return found
