"""Rendering of slurmlink's ``burst_buffer/lua`` script and its recommended ``burst_buffer.conf``.

The Lua scripts are package data with ``@NAME@`` placeholders (one of them the shared gateway client,
``gateway_client.lua``). They are filled in at install time rather than read from a config file at run
time because Slurm runs the scripts inside ``slurmctld``, some callbacks with locks held: a script must not
do any work it does not need to.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

DEFAULT_SOCKET_PATH = Path("/run/slurmlink/slurm-bb.sock")
DEFAULT_SYNC_TIMEOUT = 5.0
DEFAULT_CONNECT_RETRY = 10.0
#: Seconds an async callback waits for its answer before it lets go of other calls' pipes (22.05).
DEFAULT_RELEASE_AFTER = 0.5

_LUA_PACKAGE = "slurmlink.slurm.lua"
_TEMPLATE = "burst_buffer.lua"
#: The gateway transport both Lua scripts include (placeholder GATEWAY_CLIENT).
_CLIENT = "gateway_client.lua"
_CONF = "burst_buffer.conf"
_PLACEHOLDER_RE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)@")
_API_RE = re.compile(r"^\d+\.\d+$")
_VERSION_RE = re.compile(r"^\s*slurm(?:-wlm)?\s+(\d+)\.(\d+)(?:\.\d+)?\b", re.IGNORECASE)
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def lua_string_literal(text: str) -> str:
    """Return ``text`` as a double-quoted Lua 5.1 string literal that Lua reads back byte for byte.

    The result is pure printable ASCII: backslash and quote are escaped, and every other byte outside
    ``0x20..0x7e`` (control characters, NUL, the UTF-8 bytes of non-ASCII text) becomes a three-digit
    ``\\ddd`` escape, so a following digit can never be taken as part of the escape and no editor or
    encoding step can alter the value.
    """
    out = ['"']
    for byte in text.encode("utf-8"):
        if byte == 0x5C:
            out.append("\\\\")
        elif byte == 0x22:
            out.append('\\"')
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def _lua_number(value: float, name: str) -> str:
    """A positive finite number as Lua source: a zero, negative or infinite timeout would disable a bound."""
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return repr(number)


def _read_resource(name: str) -> str:
    return resources.files(_LUA_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def _fill_placeholders(template: str, values: dict[str, str]) -> str:
    """Replace every ``@NAME@`` in one pass, so a value that itself contains ``@X@`` is never re-expanded.

    Unknown or unfilled placeholders are errors: a script shipped with a literal ``@NAME@`` would be a Lua
    syntax error that only shows up when Slurm first calls it.
    """
    found = set(_PLACEHOLDER_RE.findall(template))
    unknown = sorted(found - values.keys())
    if unknown:
        raise ValueError(
            f"template has placeholders without a value: {', '.join('@' + n + '@' for n in unknown)}"
        )
    missing = sorted(values.keys() - found)
    if missing:
        raise ValueError(f"template lacks placeholders: {', '.join('@' + n + '@' for n in missing)}")
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def _checked_socket_path(socket_path: str | Path) -> str:
    path = str(socket_path)
    if not path or "\0" in path:
        raise ValueError(f"invalid gateway socket path {path!r}")
    if not Path(path).is_absolute():
        # slurmctld and slurmscriptd do not run in a directory we control.
        raise ValueError(f"the gateway socket path must be absolute, got {path!r}")
    if len(path.encode("utf-8")) > _MAX_SOCKET_PATH:
        raise ValueError(f"the gateway socket path is longer than {_MAX_SOCKET_PATH} bytes: {path!r}")
    return path


def render_burst_buffer_lua(
    socket_path: str | Path,
    *,
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
    connect_retry: float = DEFAULT_CONNECT_RETRY,
    release_after: float = DEFAULT_RELEASE_AFTER,
    slurm_api: str = "22.05",
) -> str:
    """Return the ``burst_buffer.lua`` text for a gateway listening on ``socket_path``.

    ``slurm_api`` is the ``major.minor`` of the Slurm that runs the script (see :func:`slurm_api_version`);
    it decides whether ``slurm_bb_get_status`` receives ``uid, gid`` before the words (23.02+).
    ``sync_timeout`` bounds the callbacks that run inside ``slurmctld``; ``connect_retry`` is how long the
    asynchronous callbacks keep trying to connect, so that a gateway restart does not fail jobs.
    ``release_after`` is how long an asynchronous callback waits for its answer before it lets go of
    the pipes it inherited from other calls (Slurm 22.05; see ``gateway_client.lua``).
    """
    path = _checked_socket_path(socket_path)
    if not _API_RE.match(slurm_api):
        raise ValueError(f"slurm_api must look like '22.05', got {slurm_api!r}")
    values = {
        "SOCKET_PATH": lua_string_literal(path),
        "SYNC_TIMEOUT": _lua_number(sync_timeout, "sync_timeout"),
        "CONNECT_RETRY": _lua_number(connect_retry, "connect_retry"),
        "RELEASE_AFTER": _lua_number(release_after, "release_after"),
        "SLURM_API": lua_string_literal(slurm_api),
        "GATEWAY_CLIENT": _read_resource(_CLIENT),
    }
    return _fill_placeholders(_read_resource(_TEMPLATE), values)


def burst_buffer_conf_text() -> str:
    """Return slurmlink's recommended ``burst_buffer.conf`` (``Directive=DW``, ``Flags=TeardownFailure``)."""
    return _read_resource(_CONF)


def slurm_api_version(version_text: str) -> str:
    """Return ``"major.minor"`` from ``sinfo --version`` style output (``slurm-wlm 22.05.8`` → ``"22.05"``).

    The callback signatures of the Lua plugin change between Slurm releases (not patch levels), so this is
    what :func:`render_burst_buffer_lua` needs as ``slurm_api``.
    """
    match = _VERSION_RE.match(version_text)
    if not match:
        raise ValueError(f"not a Slurm version string: {version_text!r}")
    return f"{match.group(1)}.{match.group(2)}"


# ------------------------------------------------------------------------------ burst_buffer/datawarp

#: The DataWarp plugin's BurstBufferType, and the two programs it runs (GetSysState, GetSysStatus).
DATAWARP_TYPE = "burst_buffer/datawarp"
DATAWARP_CLI_NAME = "dw_wlm_cli"
DATAWARP_STATUS_NAME = "dwstat"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]*\Z")


def _safe_path(path: str | Path, what: str) -> str:
    """An absolute path of plain characters: it goes into a shell script, so nothing that needs quoting."""
    text = str(path)
    if not _SAFE_PATH.match(text):
        raise ValueError(f"{what} {text!r} must be an absolute path of letters, digits and ._+-/ only")
    return text


#: Modules the wrappers run: standard library only, so they start without ``site`` (``python -S``), which
#: with the ``.pth`` files of a full environment costs more than the module itself. Slurm runs some of
#: them for every job (the bank's prolog before the job's script), so their start-up is on that path.
WRAPPED_MODULES = ("slurmlink.slurm.bank_hook", "slurmlink.slurm.datawarp")


def _exec_wrapper(python: str | Path, pythonpath: str | Path, words: list[str], role: str) -> str:
    """A shell script that runs ``python -S -m <words>`` with slurmlink on its path, for a Slurm setting
    that takes a program path without arguments. Every word is checked plain, so nothing needs quoting."""
    if words[0] not in WRAPPED_MODULES:
        raise ValueError(f"{words[0]} is not a module the wrappers may run without site: {WRAPPED_MODULES}")
    return (
        "#!/bin/sh\n"
        f"# Written by slurmlink: Slurm runs this as {role}.\n"
        f"PYTHONPATH={_safe_path(pythonpath, 'the slurmlink package directory')}\n"
        "export PYTHONPATH\n"
        f'exec {_safe_path(python, "the Python interpreter")} -S -m {" ".join(words)} "$@"\n'
    )


def render_datawarp_wrapper(
    python: str | Path, pythonpath: str | Path, socket_path: str | Path, *, status: bool = False
) -> str:
    """The executable Slurm's datawarp plugin runs as GetSysState (``status``: GetSysStatus).

    The plugin passes only the DataWarp arguments, so the wrapper adds where the gateway listens.
    """
    words = ["slurmlink.slurm.datawarp", "--socket", _safe_path(socket_path, "the gateway socket")]
    if status:
        words.append("--status")
    role = (
        "burst_buffer/datawarp's GetSysStatus (dwstat)"
        if status
        else "burst_buffer/datawarp's GetSysState (dw_wlm_cli)"
    )
    return _exec_wrapper(python, pythonpath, words, role)


# ------------------------------------------------------------------------------------------- the bank

JOB_SUBMIT_NAME = "job_submit.lua"
BANK_PROLOG_NAME = "slurmlink-bank-prolog"
BANK_EPILOG_NAME = "slurmlink-bank-epilog"
_JOB_SUBMIT_TEMPLATE = "job_submit.lua"


def render_job_submit_lua(
    socket_path: str | Path, *, sync_timeout: float = 2.0, on_unreachable: str = "allow"
) -> str:
    """The bank's ``job_submit.lua`` for a gateway listening on ``socket_path``.

    ``sync_timeout`` bounds each submission's round trip (slurmctld holds its job lock meanwhile);
    ``on_unreachable`` is what a submission gets when the gateway cannot answer: ``allow`` (the hold at
    the job's start still keeps the account from being overdrawn) or ``deny``.
    """
    if on_unreachable not in ("allow", "deny"):
        raise ValueError(f"on_unreachable must be 'allow' or 'deny', not {on_unreachable!r}")
    values = {
        "SOCKET_PATH": lua_string_literal(_checked_socket_path(socket_path)),
        "SYNC_TIMEOUT": _lua_number(sync_timeout, "sync_timeout"),
        "CONNECT_RETRY": _lua_number(DEFAULT_CONNECT_RETRY, "connect_retry"),
        "ON_UNREACHABLE": lua_string_literal(on_unreachable),
        "GATEWAY_CLIENT": _read_resource(_CLIENT),
    }
    return _fill_placeholders(_read_resource(_JOB_SUBMIT_TEMPLATE), values)


def render_bank_hook(python: str | Path, pythonpath: str | Path, socket_path: str | Path, which: str) -> str:
    """The program PrologSlurmctld (``which="prolog"``) or EpilogSlurmctld (``"epilog"``) names."""
    if which not in ("prolog", "epilog"):
        raise ValueError(f"which must be 'prolog' or 'epilog', not {which!r}")
    words = ["slurmlink.slurm.bank_hook", "--socket", _safe_path(socket_path, "the gateway socket"), which]
    role = f"{'PrologSlurmctld' if which == 'prolog' else 'EpilogSlurmctld'} (the bank's {which})"
    return _exec_wrapper(python, pythonpath, words, role)


def datawarp_conf_text(get_sys_state: str | Path, get_sys_status: str | Path, default_pool: str) -> str:
    """A ``burst_buffer.conf`` for Slurm's datawarp plugin backed by slurmlink."""
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", default_pool):
        raise ValueError(f"invalid default pool name {default_pool!r}")
    return f"""\
# burst_buffer.conf for Slurm's burst_buffer/datawarp plugin backed by slurmlink
# (BurstBufferType={DATAWARP_TYPE}).
# Both programs are small wrappers of 'slurmlink dw-wlm-cli' that know the gateway's socket.
GetSysState={_safe_path(get_sys_state, "GetSysState")}
GetSysStatus={_safe_path(get_sys_status, "GetSysStatus")}
# Jobs that name no pool= are accounted (and their persistent buffers made) in this pool; the pool
# serving DataWarp's access_mode=striped.
DefaultPool={default_pool}
# Users may create and destroy persistent buffers with #BB create_persistent / destroy_persistent.
# Teardown after a failed stage-in or stage-out instead of holding the job.
Flags=EnablePersistent,TeardownFailure
StageInTimeout=3600
StageOutTimeout=3600
# job_process and paths run while slurmctld holds its job lock.
ValidateTimeout=5
OtherTimeout=300
"""
