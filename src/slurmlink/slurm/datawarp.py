"""``slurmlink dw-wlm-cli``: the ``dw_wlm_cli`` (and ``dwstat``) of Slurm's ``burst_buffer/datawarp``.

Slurm's DataWarp plugin runs ``GetSysState --function <name> ...`` for every burst-buffer step and
reads JSON or ``NAME=VALUE`` lines back. This program turns each call into a request to the running
gateway (``slurmlink slurm gateway``, the same one ``burst_buffer.lua`` talks to), so both plugins
drive the same Workflows, pools and buffers. It imports the standard library only: slurmctld runs it
for ``job_process`` and ``paths`` while it holds its job lock, so start-up time matters.

Errors: exit status 1 and one line on stderr, which Slurm shows to the user (sbatch, the job's Reason).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from slurmlink.slurm.gateway_socket import Gateway, GatewayCallError

DEFAULT_SOCKET = "/run/slurmlink/slurm-bb.sock"
SOCKET_ENV = "SLURMLINK_GATEWAY_SOCKET"
#: Functions slurmctld waits for under its job lock: one try, bounded (ValidateTimeout is 5 s).
_SYNC_FUNCTIONS = frozenset({"job_process", "paths", "real_size", "pools"})

#: Options each function takes (long and short spellings map to one name); flags take no value.
_ALIASES = {
    "--token": "token",
    "-t": "token",
    "--job": "job",
    "-j": "job",
    "--caller": "caller",
    "-c": "caller",
    "--user": "user",
    "-u": "user",
    "--groupid": "groupid",
    "--group": "groupid",
    "-g": "groupid",
    "--capacity": "capacity",
    "-C": "capacity",
    "--nodehostnamefile": "nodefile",
    "--nidlistfile": "nodefile",
    "--jobexecutionnodefile": "execfile",
    "--jobexecutionnodefilenids": "execfile",
    "--pathfile": "pathfile",
    "--access": "access",
    "-a": "access",
    "--type": "type",
    "-T": "type",
    "--hurry": "hurry",
}
_FLAGS = frozenset({"hurry"})
_FUNCTIONS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    # name: (required, optional)
    "pools": (frozenset(), frozenset()),
    "show_instances": (frozenset(), frozenset()),
    "show_sessions": (frozenset(), frozenset()),
    "show_configurations": (frozenset(), frozenset()),
    "job_process": (frozenset({"job"}), frozenset()),
    "setup": (
        frozenset({"token", "user", "groupid", "capacity"}),
        frozenset({"caller", "job", "nodefile"}),
    ),
    "data_in": (frozenset({"token"}), frozenset({"job"})),
    "real_size": (frozenset({"token"}), frozenset({"job"})),
    "paths": (frozenset({"token", "pathfile"}), frozenset({"job"})),
    "pre_run": (frozenset({"token"}), frozenset({"job", "nodefile", "execfile"})),
    "post_run": (frozenset({"token"}), frozenset({"job"})),
    "data_out": (frozenset({"token"}), frozenset({"job"})),
    "teardown": (frozenset({"token"}), frozenset({"job", "hurry"})),
    "create_persistent": (
        frozenset({"token", "user", "capacity"}),
        frozenset({"caller", "groupid", "access", "type"}),
    ),
}

# Sizes as Slurm's bb_get_size_str writes them (and people do): binary units with "i", decimal without.
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(?:(K|M|G|T|P)(iB|B)?|(N))?\Z", re.IGNORECASE)
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_DIGITS = re.compile(r"^[0-9]+\Z")


class DataWarpError(GatewayCallError):
    """The call cannot be done; ``str(e)`` is the one line Slurm shows."""


@dataclass(frozen=True)
class Call:
    """One parsed ``dw_wlm_cli`` invocation."""

    function: str
    options: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.options.get(name)

    def __getitem__(self, name: str) -> str:
        return self.options[name]


@dataclass(frozen=True)
class Capacity:
    """``--capacity <pool>:<size>``: bytes, or (DataWarp's ``<n>N``) a number of nodes' worth."""

    pool: str
    size: int
    nodes: int | None = None


def parse_args(argv: Sequence[str]) -> Call:
    """The function and its options; DataWarpError naming the first problem."""
    args = list(argv)
    if args and args[0] == "--function":
        args = args[1:]
    if not args:
        raise DataWarpError(f"no function given; functions: {', '.join(sorted(_FUNCTIONS))}")
    function, rest = args[0], args[1:]
    if function not in _FUNCTIONS:
        # Slurm recognises this wording (an older dw_wlm_cli) for the functions it may do without.
        raise DataWarpError(f"invalid function {function!r}; functions: {', '.join(sorted(_FUNCTIONS))}")
    required, optional = _FUNCTIONS[function]
    options: dict[str, str] = {}
    index = 0
    while index < len(rest):
        word = rest[index]
        key, inline = word, None
        if word.startswith("--") and "=" in word:
            key, inline = word.split("=", 1)
        name = _ALIASES.get(key)
        if name is None or name not in required | optional:
            raise DataWarpError(f"{function}: unknown option {word!r}")
        if name in _FLAGS:
            options[name] = "true"
            index += 1
            continue
        if inline is None:
            if index + 1 >= len(rest):
                raise DataWarpError(f"{function}: {key} needs a value")
            inline = rest[index + 1]
            index += 2
        else:
            index += 1
        options[name] = inline
    missing = sorted(required - options.keys())
    if missing:
        raise DataWarpError(f"{function}: missing {', '.join('--' + m for m in missing)}")
    return Call(function, options)


def parse_size(text: str) -> tuple[int, int | None]:
    """``(bytes, nodes)`` of a size as Slurm writes it: bytes, ``1.5TiB``, ``10GB`` (decimal), or
    ``4N`` (DataWarp's node count: 0 bytes, 4 nodes)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise DataWarpError(
            f"{text!r} is not a size: write bytes, or a number with KiB, MiB, GiB, TiB, PiB (binary), "
            "KB, MB, GB, TB, PB (decimal) or N (nodes)"
        )
    number, unit, suffix, nodes = match.groups()
    if nodes:
        if "." in number:
            raise DataWarpError(f"{text!r}: a node count is a whole number")
        return 0, int(number)
    if unit is None:
        if "." in number:
            raise DataWarpError(f"{text!r}: a number of bytes is a whole number")
        return int(number), None
    base = 1024 if (suffix or "iB").lower() == "ib" else 1000
    exact = Decimal(number) * base ** _POWERS[unit.upper()]
    return int(exact.to_integral_value(rounding=ROUND_CEILING)), None


def parse_capacity(text: str) -> Capacity:
    """``<pool>:<size>`` as Slurm passes it to setup and create_persistent."""
    pool, sep, size = text.rpartition(":")
    if not sep or not pool:
        raise DataWarpError(f"--capacity {text!r} must be <pool>:<size>")
    size_bytes, nodes = parse_size(size)
    return Capacity(pool, size_bytes, nodes)


# ---------------------------------------------------------------------------------------------- outputs


def pools_json(gateway_answer: str) -> str:
    """DataWarp's pools listing from the gateway's (which lacks ``units``)."""
    pools = json.loads(gateway_answer)["pools"] if gateway_answer.strip() else []
    out = [
        {
            "id": str(p["id"]),
            "units": "bytes",
            "granularity": int(p["granularity"]),
            "quantity": int(p.get("quantity") or 0),
            "free": int(p.get("free") or 0),
        }
        for p in pools
    ]
    return json.dumps({"pools": out}, separators=(",", ":"))


def sessions_json(gateway_answer: str) -> str:
    """``show_sessions``: ``{"sessions":[{"id","created","owner","token"}]}``."""
    sessions = json.loads(gateway_answer)["sessions"]
    out = [
        {"id": int(s["id"]), "created": int(s["created"]), "owner": int(s["owner"]), "token": str(s["token"])}
        for s in sessions
    ]
    return json.dumps({"sessions": out}, separators=(",", ":"))


def instances_json(gateway_answer: str) -> str:
    """``show_instances``: one instance per session, ``capacity.nodes`` = its allocations."""
    sessions = json.loads(gateway_answer)["sessions"]
    out = [
        {
            "id": int(s["id"]),
            "capacity": {"bytes": int(s["bytes"]), "nodes": int(s["nodes"])},
            "links": {"session": int(s["id"])},
        }
        for s in sessions
    ]
    return json.dumps({"instances": out}, separators=(",", ":"))


def real_size_json(token: str, gateway_answer: str) -> str:
    text = gateway_answer.strip()
    capacity = int(text) if _DIGITS.match(text) else 0
    return json.dumps({"token": token, "capacity": capacity, "units": "bytes"}, separators=(",", ":"))


# ----------------------------------------------------------------------------------------- the gateway


# ------------------------------------------------------------------------------------------- functions


def _job_token(call: Call) -> str:
    token = call["token"]
    if not _DIGITS.match(token):
        raise DataWarpError(f"{call.function}: --token {token!r} is not a job id")
    return token


def _numeric(call: Call, name: str) -> str:
    value = call[name]
    if not _DIGITS.match(value):
        raise DataWarpError(f"{call.function}: --{name} {value!r} is not a number")
    return value


def _write_pathfile(path: str, text: str) -> None:
    """The job's environment, ``NAME=VALUE`` per line (DW_JOB_STRIPED, ...), written whole or not at all."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(target)


def run(call: Call, gateway: Gateway) -> str:
    """Do ``call``; returns what goes to stdout."""
    fn = call.function
    job = call.get("job") or ""
    if fn == "pools":
        return pools_json(gateway.call("pools", {}, sync=True))
    if fn in ("show_sessions", "show_instances"):
        answer = gateway.call("sessions", {}, sync=False)
        return sessions_json(answer) if fn == "show_sessions" else instances_json(answer)
    if fn == "show_configurations":
        return json.dumps({"configurations": []})
    if fn == "job_process":
        gateway.call("job_process", {"script": job}, sync=True)
        return ""
    if fn == "setup":
        capacity = parse_capacity(call["capacity"])
        fields = {
            "job_id": _job_token(call),
            "uid": _numeric(call, "user"),
            "gid": _numeric(call, "groupid"),
            "pool": capacity.pool,
            "size": str(capacity.size),
            "script": job,
        }
        gateway.call("setup", fields, sync=False)
        return ""
    if fn == "real_size":
        token = _job_token(call)
        return real_size_json(token, gateway.call("real_size", {"job_id": token}, sync=True))
    if fn == "paths":
        fields = {"job_id": _job_token(call), "script": job, "names": "datawarp"}
        text = gateway.call("paths", fields, sync=True)
        _write_pathfile(call["pathfile"], text)
        return ""
    if fn in ("data_in", "pre_run", "post_run", "data_out"):
        gateway.call(fn, {"job_id": _job_token(call), "script": job}, sync=False)
        return ""
    if fn == "teardown":
        token, hurry = call["token"], "true" if call.get("hurry") else "false"
        if _DIGITS.match(token):
            gateway.call("teardown", {"job_id": token, "script": job, "hurry": hurry}, sync=False)
        else:
            gateway.call("destroy_persistent", {"name": token, "hurry": hurry}, sync=False)
        return ""
    if fn == "create_persistent":
        capacity = parse_capacity(call["capacity"])
        if capacity.nodes is not None:
            raise DataWarpError("create_persistent: give the capacity in bytes, not nodes")
        fields = {
            "name": call["token"],
            "uid": _numeric(call, "user"),
            "pool": capacity.pool,
            "size": str(capacity.size),
            "access": call.get("access") or "",
            "type": call.get("type") or "",
        }
        gateway.call("create_persistent", fields, sync=False)
        return f"created {call['token']}"
    raise DataWarpError(f"invalid function {fn!r}")  # pragma: no cover - parse_args knows them all


def status(words: Sequence[str], gateway: Gateway) -> str:
    """``dwstat``-style status for ``scontrol show bbstat ...`` (GetSysStatus): the gateway's tables."""
    return gateway.call("status", {"args": " ".join(words)}, sync=True)


def main(argv: Sequence[str] | None = None, *, out: Callable[[str], None] | None = None) -> int:
    """``[--socket PATH] [--status] <dw_wlm_cli arguments>``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    socket_path = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    status_mode = False
    while args and args[0] in ("--socket", "--status"):
        if args[0] == "--status":
            status_mode, args = True, args[1:]
        elif len(args) > 1:
            socket_path, args = args[1], args[2:]
        else:
            print("slurmlink dw-wlm-cli: --socket needs a path", file=sys.stderr)
            return 2
    write = out or (lambda text: print(text, flush=True))
    gateway = Gateway(socket_path)
    try:
        text = status(args, gateway) if status_mode else run(parse_args(args), gateway)
    except GatewayCallError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"slurmlink dw-wlm-cli: {exc}", file=sys.stderr, flush=True)
        return 1
    if text:
        write(text.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
