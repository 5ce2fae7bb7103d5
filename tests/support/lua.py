"""Running slurmlink's ``burst_buffer.lua`` in a real Lua 5.1 (lupa) with Debian's real LuaSocket.

Slurm runs the script in liblua5.1 with a ``slurm`` table it provides. Here lupa's bundled Lua 5.1 plays
``slurmctld``/``slurmscriptd`` and a small Lua ``slurm`` table records the log calls. LuaSocket is a C module
that resolves the ``lua_*`` symbols from the process, so lupa's Lua must be loaded with ``RTLD_GLOBAL``
before the first ``import lupa.lua51``. lupa releases the GIL while Lua runs, so Python threads (e.g. a fake
gateway) keep serving while a callback blocks on its socket.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

LUA_CPATH_DIR = Path("/usr/lib/x86_64-linux-gnu/lua/5.1")
LUA_PATH_DIR = Path("/usr/share/lua/5.1")
_LUASOCKET_FILES = (
    LUA_CPATH_DIR / "socket" / "core.so",
    LUA_CPATH_DIR / "socket" / "unix.so",
    LUA_PATH_DIR / "socket.lua",
)

_lua51: ModuleType | None = None


def lua51() -> ModuleType:
    """Import ``lupa.lua51`` with ``RTLD_GLOBAL`` so C modules like LuaSocket can link against it."""
    global _lua51
    if _lua51 is None:
        old = sys.getdlopenflags()
        sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_NOW)
        try:
            import lupa.lua51 as module
        finally:
            sys.setdlopenflags(old)
        _lua51 = module
    return _lua51


def require_luasocket() -> None:
    """Skip the calling test when Debian's ``lua-socket`` is not installed (CI installs it)."""
    missing = [str(p) for p in _LUASOCKET_FILES if not p.exists()]
    if missing:
        pytest.skip(f"Debian's lua-socket is not installed (apt-get install lua-socket): missing {missing}")


_SLURM_TABLE = """
local record = ...
local function logger(level)
    return function(fmt, ...) record(level, string.format(fmt, ...)) end
end
slurm = {
    SUCCESS = 0, ERROR = -1, FAILURE = -1,
    log_info = logger("info"), log_error = logger("error"),
    log_verbose = logger("verbose"), log_debug = logger("debug"),
}
"""

_PACKED_CALL = """
function(name, ...)
    local function pack(...) return { n = select("#", ...), ... } end
    local f = _G[name]
    if type(f) ~= "function" then error("no global function " .. tostring(name)) end
    return pack(f(...))
end
"""


class BBScript:
    """One Lua state with the ``slurm`` table and a loaded ``burst_buffer.lua``.

    ``prelude`` is Lua run after the search paths are set and before the script (e.g. to hide LuaSocket
    through ``package.preload``). ``log`` collects ``(level, message)`` of the script's ``slurm.log_*`` calls.
    """

    def __init__(self, script: str, *, prelude: str = "") -> None:
        self.log: list[tuple[str, str]] = []
        self.runtime: Any = lua51().LuaRuntime(unpack_returned_tuples=False)
        self.runtime.execute(
            f'package.cpath = "{LUA_CPATH_DIR}/?.so;" .. package.cpath\n'
            f'package.path = "{LUA_PATH_DIR}/?.lua;" .. package.path\n'
        )
        self.runtime.eval(f"function(...) {_SLURM_TABLE} end")(self._record)
        if prelude:
            self.runtime.execute(prelude)
        self.runtime.execute(script)
        self._packed_call = self.runtime.eval(_PACKED_CALL)

    def _record(self, level: str, message: str) -> None:
        self.log.append((level, message))

    def table(self, values: dict[str, Any]) -> Any:
        """A Lua table (e.g. a 23.02+ ``job_info``) from a dict."""
        return self.runtime.table_from(values)

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        """Call global ``name`` like Slurm does and return *all* its return values (``()`` for none)."""
        packed = self._packed_call(name, *args)
        return tuple(packed[i] for i in range(1, packed["n"] + 1))

    def hook_socket_sleep(self, callback: Callable[[float], None]) -> None:
        """Make LuaSocket's ``socket.sleep`` call ``callback(seconds)`` first (observes connect retries)."""
        self.runtime.eval(
            """function(cb)
                local socket = require("socket.core")
                local sleep = socket.sleep
                socket.sleep = function(t) cb(t); return sleep(t) end
            end"""
        )(callback)
