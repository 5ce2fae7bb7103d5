"""The job bridge's reconciler: a SlurmJob becomes one Slurm batch job, run as its owner, followed to
its end, its outputs collected.

One reconciler per SlurmJob kind (``slurmlink.io/v1`` and the seed's ``wlm.sylabs.io/v1alpha1``,
mapped onto the same spec by ``wlmjob.bridge_spec``); both share one :class:`Bridge` (Slurm commands,
the one-call-per-tick :class:`JobView`, the partition publisher). Each step is idempotent and is
recorded before its side effect, so a bridge killed at any point resumes without losing or repeating
a job:

1. finalizer added (deleting the object cancels the Slurm job first);
2. ``Staging``: the job directory ``<root>/<uid>/<namespace>.<name>.<uid8>`` created as the owner,
   inputs copied or unpacked as the owner (the script goes to sbatch on its standard input);
3. ``Submitted=Unknown/Submitting`` written with the job's tag, then a snapshot taken after that
   write is searched for the tag (a job sent before a crash is adopted), and only then ``sbatch`` runs,
   as the owner, with an environment built from scratch;
4. ``Queued``/``Running`` from the job view, ``spec.suspend`` as ``scontrol hold``/``release``,
   ``spec.cancel`` as ``scancel``;
5. ``Collecting``: outputs hashed as the owner (the seed's ``results`` copied to its hostPath), then
   ``Succeeded``, ``Failed`` (reason = Slurm's state) or ``Cancelled``; ``Unknown`` when Slurm lost it;
6. ``ttlSecondsAfterFinished`` after the end, the object (and with it the directory) is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pwd
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slurmlink.api import metrics
from slurmlink.bridge import files
from slurmlink.bridge.jobview import JobView, Lost
from slurmlink.bridge.owner import Owner
from slurmlink.bridge.publisher import PartitionPublisher
from slurmlink.bridge.uploads import UploadError, UploadStore
from slurmlink.client.base import Client
from slurmlink.client.informer import Key, SharedInformer
from slurmlink.controllers.runtime import Reconciler, Result, Watch, watches
from slurmlink.resources import errors
from slurmlink.resources.access import owner_uid
from slurmlink.resources.bridge import wlmjob
from slurmlink.resources.bridge.common import FINISHED_PHASES
from slurmlink.resources.bridge.node import matches
from slurmlink.resources.bridge.partition import PARTITION
from slurmlink.resources.bridge.slurmjob import SLURM_JOB
from slurmlink.resources.bridge.timelimit import parse_time_limit
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.quantity import mebibytes
from slurmlink.resources.storage.capacity import selector_matches
from slurmlink.slurm import batchjobs
from slurmlink.slurm.batchjobs import BatchRequest, JobSummary
from slurmlink.slurm.commands import SlurmCommands, stop_process
from slurmlink.slurm.partition_config import PartitionConfig

log = logging.getLogger(__name__)

FINALIZER = "slurmlink.io/job-bridge"
#: The comment every bridge job carries: ``slurmlink:<object uid>``.
TAG_PREFIX = "slurmlink:"
#: How long a deleted job's Slurm job gets to end after ``scancel`` before the object goes anyway.
CANCEL_GRACE = 60.0
#: Re-reads a live job's state this often even without a change notice (a safety net, no Slurm call).
RESYNC = 30.0
#: ``sbatch`` errors that say "try again later" rather than "this job is wrong".
_TRANSIENT = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Resource temporarily unavailable",
    "Zero Bytes were transmitted",
    "slurm_persist_conn_open",
)


@dataclass(frozen=True)
class BridgeSettings:
    """What the bridge needs from ``serve``'s configuration (README, Configuration)."""

    #: The Slurm cluster's name, as Partitions and job statuses carry it.
    cluster: str
    #: Where job directories are made: on a file system the compute nodes share.
    root: Path
    uploads: Path
    slurm_conf: Path | None = None
    #: Seconds between two reads of Slurm's jobs.
    interval: float = 2.0
    #: Whether sacct answers for jobs slurmctld has forgotten; None: as slurm.conf says at the time.
    accounting: bool | None = None
    partition_interval: float = 60.0
    partition_config: PartitionConfig | None = None
    max_upload: int = 10 * 1024**3
    max_output_files: int = 10_000
    #: Concurrent sbatch/stage operations (each a process).
    submit_concurrency: int = 8


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(text: str | None) -> float | None:
    """Seconds since an RFC 3339 time, None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (datetime.now(UTC) - moment).total_seconds()


def set_condition(status: dict[str, Any], type_: str, value: str, reason: str, message: str = "") -> None:
    """Set one ``metav1.Condition``; its transition time moves only when its status changes."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != type_]
    old = next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)
    changed = old is None or old.get("status") != value
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now() if changed else old["lastTransitionTime"],  # type: ignore[index]
        }
    )
    status["conditions"] = sorted(conditions, key=lambda c: c["type"])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


class JobFailure(Exception):
    """The job cannot go on: it ends Failed with ``reason`` and ``message``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Retry(Exception):
    """Not now (e.g. slurmctld is unreachable): ``message`` is shown and the step runs again later."""


@dataclass
class Bridge:
    """What both SlurmJob reconcilers share."""

    settings: BridgeSettings
    commands: SlurmCommands = field(init=False)
    view: JobView = field(init=False)
    uploads: UploadStore = field(init=False)
    publisher: PartitionPublisher | None = None
    #: Kind key → the function that enqueues one of its objects.
    _enqueue: dict[str, Callable[[Key], None]] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.commands = SlurmCommands(s.slurm_conf)
        self.view = JobView(self.commands, interval=s.interval, accounting=s.accounting)
        self.uploads = UploadStore(s.uploads, max_bytes=s.max_upload)
        self._slots = asyncio.Semaphore(s.submit_concurrency)

    def start_publishing(self, client: Client) -> None:
        self.publisher = PartitionPublisher(
            client,
            self.commands,
            self.settings.cluster,
            config=self.settings.partition_config,
            interval=self.settings.partition_interval,
        )

    async def run(self) -> None:
        """The job view's loop, and the publisher's."""
        loops = [self.view.run()]
        if self.publisher is not None:
            loops += [self.publisher.run(), self._retry_publishing()]
        await asyncio.gather(*loops)

    async def _retry_publishing(self) -> None:
        """Publish as soon as Slurm answers again rather than a whole partition interval later
        (the server may start before slurmctld does)."""
        assert self.publisher is not None
        while True:
            await asyncio.sleep(max(self.settings.interval, 5.0))
            if self.publisher.last_error is not None and self.view.last_error is None and self.view.ticks:
                self.publisher.poke()

    # ---- running Slurm's commands as the owner -------------------------------------------------

    def environment(self, owner: Owner, extra: dict[str, str]) -> dict[str, str]:
        """The job's environment, from scratch: the owner's basics, Slurm's config, the spec's variables."""
        try:
            entry = pwd.getpwuid(owner.uid)
            home, shell = entry.pw_dir, entry.pw_shell
        except KeyError:
            home, shell = "/", "/bin/sh"
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "SHELL": shell,
            "USER": owner.login,
            "LOGNAME": owner.login,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        if self.settings.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.settings.slurm_conf)
        return {**env, **extra}

    async def make_job_dir(self, owner: Owner, directory: Path) -> None:
        """The job's directory, made by a plain ``mkdir`` run as the owner inside their own
        ``root/<uid>`` (checked by :func:`files.ensure_user_dir`), then checked to be a real
        directory of theirs. No helper process: most jobs have no files to move, and a Python
        start per job would cost more than the sbatch it prepares."""
        await files.ensure_user_dir(owner, self.settings.root)
        _rc, _out, err = await self.as_owner(owner, ["mkdir", "-m", "0700", "--", str(directory)])
        try:
            st = os.lstat(directory)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != owner.uid:
            why = err.strip() or "it is not a directory of the owner's"
            raise JobFailure("InputsFailed", f"cannot make the job directory {directory}: {why}")

    async def as_owner(
        self,
        owner: Owner,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> tuple[int, str, str]:
        """Run a Slurm command as the owner (Slurm authenticates the uid through munge)."""
        if os.geteuid() == 0:
            # setpriv (util-linux) rather than Popen(user=...): the event loop (uvloop) has no such
            # arguments, and setpriv drops to exactly these ids before it runs the command.
            groups = ",".join(str(g) for g in owner.groups)
            argv = [
                "setpriv",
                f"--reuid={owner.uid}",
                f"--regid={owner.gid}",
                f"--groups={groups}" if groups else "--clear-groups",
                "--",
                *argv,
            ]
        elif owner.uid != os.geteuid():
            raise JobFailure(
                "NotPermitted",
                f"the bridge runs as uid {os.geteuid()} and is not root: it cannot act as {owner.login}",
            )
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env or self.environment(owner, {}),
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
            except TimeoutError:
                await stop_process(proc)
                raise Retry(f"{argv[0]} did not answer within 60 s") from None
            except BaseException:
                await stop_process(proc)  # cancelled: the server is stopping
                raise
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _job_dir_name(obj: Obj) -> str:
    m = obj["metadata"]
    return f"{m.get('namespace') or 'default'}.{m['name']}.{str(m.get('uid', ''))[:8]}"


def job_dir(root: Path, obj: Obj) -> Path | None:
    """Where the job's directory is (also for the API's logs and downloads); None without an owner."""
    uid = owner_uid(obj)
    return None if uid is None else root / str(uid) / _job_dir_name(obj)


def _sbatch_error(stderr: str) -> str:
    lines = [line.removeprefix("sbatch: error: ").strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines) or "sbatch failed without a message"


class JobReconciler(Reconciler):
    """One SlurmJob kind's reconciler over the shared :class:`Bridge`."""

    def __init__(self, kind: Kind, bridge: Bridge, *, runs_background: bool) -> None:
        self.kind = kind
        self.name = f"job-bridge-{kind.group}"
        self.bridge = bridge
        self._runs_background = runs_background
        self._enqueue: Callable[[Key], None] | None = None
        self._cancel_sent: dict[str, float] = {}
        self._wlm = kind.group == wlmjob.GROUP

    # ---- plumbing ------------------------------------------------------------------------------

    async def background(self, enqueue: Callable[[Key], None]) -> None:
        self._enqueue = enqueue
        if self._runs_background:
            self.bridge.start_publishing(self.client)
            await self.bridge.run()

    def _partitions(self) -> list[Obj]:
        informer: SharedInformer = self.informers.informer(PARTITION)
        cluster = self.bridge.settings.cluster
        return [p for p in informer.cache.values() if (p.get("spec") or {}).get("cluster") == cluster]

    def secondary(self) -> list[Watch]:
        """Partitions, cached for choosing where a job goes (their changes start nothing)."""
        return [watches(PARTITION, lambda _obj: [])]

    def _notify(self, obj: Obj) -> Callable[[], None]:
        key = (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])

        def notify() -> None:
            if self._enqueue is not None:
                self._enqueue(key)

        return notify

    async def _put(self, client: Client, obj: Obj, status: dict[str, Any]) -> Obj | None:
        status = {k: v for k, v in status.items() if v is not None}
        status["observedGeneration"] = obj["metadata"].get("generation")
        if self._wlm:
            status["status"] = wlmjob.seed_status(status.get("phase"))
        if obj.get("status") == status:
            return obj
        try:
            updated = await client.update_status(self.kind, {**obj, "status": status})
        except errors.ApiError as exc:
            if exc.code == 404:
                return None
            raise
        # The next reconcile must see this write, not the cache's older copy (which would, say,
        # look like a submission still in doubt).
        self.informers.informer(self.kind).put(updated)
        return updated

    # ---- what the job asks for -----------------------------------------------------------------

    def spec_of(self, obj: Obj) -> dict[str, Any]:
        """The ``slurmlink.io/v1`` spec this object runs as."""
        if not self._wlm:
            return dict(obj.get("spec") or {})
        selector = wlmjob.node_selector(obj)
        published = self._partitions()
        names = [str(p["spec"]["slurmName"]) for p in published if matches(selector, p)]
        if published and not names:
            raise JobFailure("NoPartition", f"no partition's node matches the node selector {selector}")
        return wlmjob.bridge_spec(obj, names)

    def _partition_names(self, spec: dict[str, Any]) -> tuple[str, ...]:
        if spec.get("partition"):
            return (str(spec["partition"]),)
        if spec.get("partitions"):
            return tuple(str(p) for p in spec["partitions"])
        selector = spec.get("partitionSelector")
        if selector is None:
            return ()
        chosen = [
            str(p["spec"]["slurmName"])
            for p in self._partitions()
            if selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})
        ]
        if not chosen:
            raise JobFailure("NoPartition", "no published Partition matches spec.partitionSelector")
        return tuple(chosen)

    def batch_request(self, obj: Obj, spec: dict[str, Any], directory: Path) -> BatchRequest:
        res = spec.get("resources") or {}
        limit: float | None = None
        if res.get("timeLimit") is not None:
            minutes = parse_time_limit(res["timeLimit"])
            limit = math.inf if minutes is None else float(minutes)
        gpus = res.get("gpus")
        return BatchRequest(
            script=None,  # on sbatch's standard input: nothing to write as the owner first
            work_dir=directory,
            job_name=str(obj["metadata"]["name"]),
            comment=TAG_PREFIX + str(obj["metadata"]["uid"]),
            partitions=self._partition_names(spec),
            nodes=res.get("nodes"),
            tasks=res.get("tasks"),
            cpus_per_task=res.get("cpusPerTask"),
            memory_per_node_mib=mebibytes(res["memoryPerNode"]) if res.get("memoryPerNode") else None,
            memory_per_cpu_mib=mebibytes(res["memoryPerCPU"]) if res.get("memoryPerCPU") else None,
            gpus=None if gpus is None else str(gpus),
            gres=res.get("gres"),
            constraints=res.get("constraints"),
            exclusive=bool(res.get("exclusive")),
            time_limit=limit,
            account=spec.get("account"),
            qos=spec.get("qos"),
            reservation=spec.get("reservation"),
            array=spec.get("array"),
        )

    def owner_of(self, obj: Obj) -> Owner:
        uid = owner_uid(obj)
        if uid is None:
            raise JobFailure(
                "NoOwner",
                "the job has no owner: create it with a user's credential (or, as an admin, set the "
                "slurmlink.io/owner-uid label) so the bridge knows whom to run it as",
            )
        try:
            return Owner.of_uid(uid)
        except Exception as exc:  # unknown uid, root
            raise JobFailure("NoOwner", str(exc)) from exc

    # ---- the reconcile ---------------------------------------------------------------------------

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        m = obj["metadata"]
        status = dict(obj.get("status") or {})
        if m.get("deletionTimestamp"):
            return await self._finalize(client, obj, status)
        if FINALIZER not in (m.get("finalizers") or []):
            await client.update(
                self.kind, {**obj, "metadata": {**m, "finalizers": [*m.get("finalizers", []), FINALIZER]}}
            )
            return None
        phase = status.get("phase")
        if phase in FINISHED_PHASES or phase == "Unknown":
            return await self._expire(client, obj, status)
        try:
            if status.get("jobId"):
                return await self._follow(client, obj, status)
            return await self._start(client, obj, status)
        except JobFailure as exc:
            status.update(phase="Failed", reason=exc.reason, message=exc.message, endTime=_now())
            set_condition(status, "Finished", "True", exc.reason, exc.message)
            await self._put(client, obj, status)
            return None
        except Retry as exc:
            status["message"] = str(exc)
            await self._put(client, obj, status)
            return Result(requeue_after=10)

    async def _start(self, client: Client, obj: Obj, status: dict[str, Any]) -> Result | None:
        spec = obj.get("spec") or {}
        if spec.get("cancel"):
            status.update(phase="Cancelled", reason="Cancelled", message="cancelled before submission")
            status["endTime"] = _now()
            set_condition(status, "Finished", "True", "Cancelled", "spec.cancel before submission")
            await self._put(client, obj, status)
            return None
        if spec.get("suspend"):
            status.update(phase="Pending", message="suspended: submitted once spec.suspend is false")
            await self._put(client, obj, status)
            return None
        owner = self.owner_of(obj)
        job_spec = self.spec_of(obj)
        directory = job_dir(self.bridge.settings.root, obj)
        assert directory is not None
        submitting = condition(status, "Submitted")
        if submitting is None:
            status.update(phase="Staging", message=None, workDir=str(directory))
            status["cluster"] = self.bridge.settings.cluster
            if job_spec.get("inputs"):  # staging takes a while: say so (a bare mkdir does not)
                obj = await self._put(client, obj, status) or obj
            await self._stage(obj, owner, job_spec, directory)
            set_condition(status, "InputsReady", "True", "Staged", "")
            # Recorded before sbatch: after a crash from here on, the job is looked up, never re-sent.
            set_condition(status, "Submitted", "Unknown", "Submitting", "")
            updated = await self._put(client, obj, status)
            if updated is None:
                return None
            obj = updated
        request = self.batch_request(obj, job_spec, directory)
        job_id = await self._submit(obj, owner, job_spec, request, resuming=submitting is not None)
        status.update(phase="Queued", jobId=job_id, submitTime=_now(), message=None)
        set_condition(status, "Submitted", "True", "Submitted", f"Slurm job {job_id}")
        self.bridge.view.track(job_id, self._notify(obj))
        await self._put(client, obj, status)
        return Result(requeue_after=RESYNC)

    async def _stage(self, obj: Obj, owner: Owner, spec: dict[str, Any], directory: Path) -> None:
        root = self.bridge.settings.root
        inputs = spec.get("inputs") or []
        try:
            if not inputs:
                await self.bridge.make_job_dir(owner, directory)
                return
            made = await files.make_job_dir(owner, root, directory.name)
            assert made == directory, (made, directory)
            for i, item in enumerate(inputs):
                await self._stage_input(obj, owner, directory, i, item)
        except files.FilesError as exc:
            raise JobFailure("InputsFailed", str(exc)) from exc

    async def _stage_input(
        self, obj: Obj, owner: Owner, directory: Path, i: int, item: dict[str, Any]
    ) -> None:
        to = str(item.get("to") or ".")
        if item.get("path"):
            await files.copy_in(owner, str(item["path"]), directory, to, item.get("name"))
            return
        namespace = obj["metadata"].get("namespace") or "default"
        try:
            upload = self.bridge.uploads.get(namespace, str(item.get("upload")))
        except UploadError as exc:
            raise JobFailure("InputsFailed", f"spec.inputs[{i}]: {exc.message}") from exc
        if upload.owner_uid != owner.uid:
            raise JobFailure("InputsFailed", f"spec.inputs[{i}]: upload {upload.id} belongs to another user")
        if item.get("sha256") and item["sha256"] != upload.sha256:
            raise JobFailure(
                "ChecksumMismatch",
                f"spec.inputs[{i}]: upload {upload.id} has sha256 {upload.sha256}, not {item['sha256']}",
            )
        source = self.bridge.uploads.path(namespace, upload.id)
        unpack = item.get("unpack") or "none"
        if unpack == "tar":
            await files.unpack(owner, directory, to, "tar", source)
        elif unpack == "zip":
            await files.unpack(owner, directory, to, "zip", source)
        else:
            name = item.get("name") or upload.name or upload.id
            target = name if to in (".", "") else f"{to.rstrip('/')}/{name}"
            await files.write_file(owner, directory, target, source, sha256=upload.sha256)

    async def _submit(
        self, obj: Obj, owner: Owner, spec: dict[str, Any], request: BatchRequest, *, resuming: bool
    ) -> str:
        """Adopt the job a crashed bridge sent, else send it: never two Slurm jobs for one object.

        Only a job found ``Submitting`` on entry (``resuming``) can have been sent already, since
        sbatch runs only after that mark is stored; it waits for a snapshot of Slurm's jobs taken
        after now and looks its tag up there. A first submission needs no lookup.
        """
        view = self.bridge.view
        if resuming:
            try:
                await view.fresh(time.monotonic())
            except TimeoutError:
                raise Retry(
                    f"cannot read Slurm's jobs ({view.last_error or 'no answer'}), so cannot tell "
                    "whether this job was already submitted; waiting"
                ) from None
            adopted = view.job_with_comment(request.comment)
            if adopted is not None:
                log.info("adopting Slurm job %s for %s", adopted, request.comment)
                return adopted
        env = self.bridge.environment(
            owner,
            {str(e["name"]): str(e.get("value") or "") for e in spec.get("environment") or []},
        )
        argv = batchjobs.sbatch_argv(request)
        script = str(spec.get("script") or "").encode()
        rc, out, err = await self.bridge.as_owner(owner, argv, cwd=request.work_dir, env=env, stdin=script)
        job_id = batchjobs.parse_job_id(out) if rc == 0 else None
        if job_id is None:
            message = _sbatch_error(err)
            if any(marker in err for marker in _TRANSIENT):
                metrics.BRIDGE_SUBMISSIONS.labels("retried").inc()
                raise Retry(f"sbatch: {message}; trying again")
            metrics.BRIDGE_SUBMISSIONS.labels("refused").inc()
            raise JobFailure("SubmitFailed", f"sbatch refused the job: {message}")
        metrics.BRIDGE_SUBMISSIONS.labels("submitted").inc()
        view.poke()
        return job_id

    async def _follow(self, client: Client, obj: Obj, status: dict[str, Any]) -> Result | None:
        spec = obj.get("spec") or {}
        job_id = str(status["jobId"])
        view = self.bridge.view
        view.track(job_id, self._notify(obj))
        summary = view.summary(job_id)
        if summary is None:
            return Result(requeue_after=max(self.bridge.settings.interval, 1.0))
        if isinstance(summary, Lost):
            status.update(
                phase="Unknown",
                reason="Lost",
                message=f"Slurm no longer knows job {job_id} (not in scontrol, nor in sacct)",
            )
            view.untrack(job_id)
            await self._put(client, obj, status)
            return None
        owner = self.owner_of(obj)
        if not summary.ended:
            if spec.get("cancel"):
                await self._cancel(owner, job_id)
            else:
                await self._hold_or_release(owner, spec, summary, status)
        self._apply(status, summary)
        if not summary.ended:
            await self._put(client, obj, status)
            return Result(requeue_after=RESYNC)
        if spec.get("outputs") or (self._wlm and spec.get("results")):
            status["phase"] = "Collecting"
            obj = await self._put(client, obj, status) or obj
        await self._collect(obj, owner, status, summary)
        view.untrack(job_id)
        set_condition(status, "Finished", "True", summary.state, "")
        await self._put(client, obj, status)
        return await self._expire(client, obj, status)

    def _apply(self, status: dict[str, Any], summary: JobSummary) -> None:
        status.update(
            slurmState=summary.state,
            reason=summary.reason if summary.reason not in (None, "None") else None,
            partition=summary.partition,
            nodes=summary.nodes,
            startTime=summary.start_time,
            endTime=summary.end_time if summary.ended else None,
            exitCode=summary.exit_code,
            signal=summary.signal,
            phase=summary.phase,
        )
        if summary.std_out:
            status["stdoutPath"] = summary.std_out
        if summary.start_time and summary.phase == "Running":
            set_condition(status, "Started", "True", "Running", "")

    async def _hold_or_release(
        self, owner: Owner, spec: dict[str, Any], summary: JobSummary, status: dict[str, Any]
    ) -> None:
        held = summary.reason in ("JobHeldUser", "JobHeldAdmin")
        if spec.get("suspend") and summary.state == "PENDING" and not held:
            await self._scontrol(owner, "hold", summary.job_id)
            set_condition(status, "Suspended", "True", "Held", "spec.suspend: held in Slurm")
        elif not spec.get("suspend") and summary.reason == "JobHeldUser" and condition(status, "Suspended"):
            await self._scontrol(owner, "release", summary.job_id)
            set_condition(status, "Suspended", "False", "Released", "")

    async def _scontrol(self, owner: Owner, verb: str, job_id: str) -> None:
        rc, out, err = await self.bridge.as_owner(owner, ["scontrol", verb, job_id])
        if rc != 0:
            log.warning("scontrol %s %s: %s", verb, job_id, (err or out).strip())
        self.bridge.view.poke()

    async def _cancel(self, owner: Owner, job_id: str) -> None:
        sent = self._cancel_sent.get(job_id)
        if sent is not None and time.monotonic() - sent < 10:
            return
        self._cancel_sent[job_id] = time.monotonic()
        rc, out, err = await self.bridge.as_owner(owner, ["scancel", job_id])
        if rc != 0:
            log.warning("scancel %s: %s", job_id, (err or out).strip())
        self.bridge.view.poke()

    async def _collect(self, obj: Obj, owner: Owner, status: dict[str, Any], summary: JobSummary) -> None:
        """Hash the outputs (and copy the seed's results out) as the owner; a failure fails the job."""
        directory = Path(str(status.get("workDir") or job_dir(self.bridge.settings.root, obj)))
        spec = self.spec_of_safe(obj)
        globs = spec.get("outputs") or []
        try:
            if globs and summary.state != "CANCELLED":
                collected = await files.collect(
                    owner, directory, list(globs), max_files=self.bridge.settings.max_output_files
                )
                status["outputs"] = [{"path": c.path, "size": c.size, "sha256": c.sha256} for c in collected]
            destination = wlmjob.results_destination(obj) if self._wlm else None
            if destination and summary.state != "CANCELLED":
                results = (obj.get("spec") or {}).get("results") or {}
                kind = ((results.get("mount") or {}).get("hostPath") or {}).get("type", "")
                await files.copy_out(
                    owner, directory, str(results.get("from")), destination, create=kind.endswith("OrCreate")
                )
            set_condition(status, "OutputsCollected", "True", "Collected", "")
        except files.FilesError as exc:
            set_condition(status, "OutputsCollected", "False", "CollectFailed", str(exc))
            status.update(phase="Failed", reason="CollectFailed", message=f"outputs: {exc}")
            return
        status["phase"] = summary.phase

    def spec_of_safe(self, obj: Obj) -> dict[str, Any]:
        try:
            return self.spec_of(obj)
        except JobFailure:
            return wlmjob.bridge_spec(obj, []) if self._wlm else dict(obj.get("spec") or {})

    async def _expire(self, client: Client, obj: Obj, status: dict[str, Any]) -> Result | None:
        ttl = (obj.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None:
            return None
        age = _since(status.get("endTime")) or 0.0
        if age < ttl:
            return Result(requeue_after=ttl - age + 0.5)
        m = obj["metadata"]
        try:
            await client.delete(self.kind, m.get("namespace"), m["name"])
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
        return None

    async def _finalize(self, client: Client, obj: Obj, status: dict[str, Any]) -> Result | None:
        """Deleted: cancel the Slurm job and wait for it to end (up to CANCEL_GRACE), remove the
        job directory as the owner, then let the object go."""
        m = obj["metadata"]
        if FINALIZER not in (m.get("finalizers") or []):
            return None
        job_id = status.get("jobId")
        owner: Owner | None
        try:
            owner = self.owner_of(obj)
        except JobFailure:
            owner = None
        if job_id and owner is not None and status.get("phase") not in FINISHED_PHASES:
            summary = self.bridge.view.summary(str(job_id))
            self.bridge.view.track(str(job_id), self._notify(obj))
            waited = _since(m.get("deletionTimestamp")) or 0.0
            if isinstance(summary, JobSummary) and not summary.ended and waited < CANCEL_GRACE:
                await self._cancel(owner, str(job_id))
                return Result(requeue_after=2.0)
            self.bridge.view.untrack(str(job_id))
        directory = job_dir(self.bridge.settings.root, obj)
        if owner is not None and directory is not None:
            try:
                await files.remove_job_dir(owner, directory)
            except files.FilesError as exc:
                log.warning("%s/%s: job directory not removed: %s", m.get("namespace"), m["name"], exc)
        finalizers = [f for f in m.get("finalizers") or [] if f != FINALIZER]
        try:
            await client.update(self.kind, {**obj, "metadata": {**m, "finalizers": finalizers}})
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
        return None


def reconcilers(bridge: Bridge) -> list[Reconciler]:
    """The two kinds' reconcilers; the first runs the shared loops."""
    return [
        JobReconciler(SLURM_JOB, bridge, runs_background=True),
        JobReconciler(wlmjob.WLM_SLURM_JOB, bridge, runs_background=False),
    ]
