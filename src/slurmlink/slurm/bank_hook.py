"""The bank's PrologSlurmctld and EpilogSlurmctld: ``python3 -m slurmlink.slurm.bank_hook prolog|epilog``.

slurmscriptd runs these for every job, outside slurmctld's locks, with the job in the environment. They
hand the job to the running gateway (the same one job_submit.lua and burst_buffer.lua talk to), which
reads the job from slurmctld and holds (prolog) or charges (epilog) it in the bank. Standard library
only, for a short start-up. Exit 0 lets the job start (prolog) or finish; a failing prolog makes Slurm
requeue the job (the gateway then holds it with the bank's reason, see docs/bank.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from slurmlink.slurm.gateway_socket import Gateway, GatewayCallError

DEFAULT_SOCKET = "/run/slurmlink/slurm-bb.sock"
_ENV = {
    "job_id": "SLURM_JOB_ID",
    "cluster": "SLURM_CLUSTER_NAME",
    "account": "SLURM_JOB_ACCOUNT",
    "user": "SLURM_JOB_USER",
    "partition": "SLURM_JOB_PARTITION",
    "restart": "SLURM_JOB_RESTART_COUNT",
    "exit_code": "SLURM_JOB_EXIT_CODE",
}


def fields(env: Mapping[str, str]) -> dict[str, str]:
    """What the gateway needs from the hook's environment."""
    return {name: env[var] for name, var in _ENV.items() if env.get(var)}


def main(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, connect_retry: float = 10.0
) -> int:
    """``[--socket PATH] prolog|epilog``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if env is None else env
    socket_path = DEFAULT_SOCKET
    if len(args) >= 2 and args[0] == "--socket":
        socket_path, args = args[1], args[2:]
    if args not in (["prolog"], ["epilog"]):
        print("usage: python3 -m slurmlink.slurm.bank_hook [--socket PATH] prolog|epilog", file=sys.stderr)
        return 2
    sent = fields(environ)
    if "job_id" not in sent:
        print("slurmlink bank hook: SLURM_JOB_ID is not set (run by Slurm's slurmscriptd)", file=sys.stderr)
        return 2
    try:
        answer = Gateway(socket_path, connect_retry=connect_retry).call(f"bank_{args[0]}", sent, sync=False)
    except GatewayCallError as exc:
        print(f"slurmlink bank {args[0]} of job {sent['job_id']}: {exc}", file=sys.stderr, flush=True)
        return 1
    if answer:
        print(f"slurmlink bank {args[0]} of job {sent['job_id']}: {answer.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
