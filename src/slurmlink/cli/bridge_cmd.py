"""``slurmlink sj upload|download`` and ``slurmlink logs sj NAME``: a SlurmJob's files from the
command line, through the job bridge's API (``/bridge/v1``, docs/job-bridge.md).

- ``sj upload FILE`` streams FILE to the server, checks the sha256 the server computed against the
  one computed here while sending, and prints the upload's id with an ``inputs:`` snippet.
- ``sj download NAME [PATH]...`` fetches the outputs the job's ``status.outputs`` lists into a
  directory of its own, each checked against its listed size and sha256 and renamed into place only
  when it matches. A listed path that would leave that directory (absolute, with ``..``, or through
  a link already there) is refused: nothing is ever written outside it.
- ``logs sj NAME [-f]`` prints the job's output, following it until the job has ended.

Every request goes with the kubeconfig's credentials, so the server decides who may read what (a
user, only their own jobs). Failures are one line, as kubectl words them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import click

from slurmlink.cli.resources_cmd import CliError, error_text, kubeconfig_options, run_with_client

if TYPE_CHECKING:
    from slurmlink.client.http import HttpClient
    from slurmlink.resources.kind import Kind, Obj

PREFIX = "/bridge/v1"
#: The two SlurmJob groups: slurmlink's own and the WLM operator's (the seed's).
SLURMLINK_GROUP = "slurmlink.io"
WLM_GROUP = "wlm.sylabs.io"
#: Bytes read or sent at a time.
CHUNK = 1024 * 1024
#: Files from this size on show their progress on stderr (when it is a terminal).
PROGRESS_FROM = 16 * 1024 * 1024
#: Seconds a download or an upload's answer may go without a byte before it is given up.
TRANSFER_TIMEOUT = 300.0
#: Seconds between two looks at a job whose output does not exist yet (``logs -f``).
LOG_WAIT = 2.0
_FINISHED = ("Succeeded", "Failed", "Cancelled", "Unknown")
_ARCHIVES = {".tar": "tar", ".tgz": "tar", ".tbz2": "tar", ".txz": "tar", ".zip": "zip"}
_ARCHIVE_SUFFIXES = {".gz": "tar", ".bz2": "tar", ".xz": "tar"}


# ---- shared ----------------------------------------------------------------------------------------


def _namespace_option(func: Any) -> Any:
    return click.option(
        "-n",
        "--namespace",
        default=None,
        help="Namespace (default: the kubeconfig context's namespace, else 'default').",
    )(func)


def _group_option(func: Any) -> Any:
    return click.option(
        "--group",
        type=click.Choice([SLURMLINK_GROUP, WLM_GROUP]),
        default=None,
        help=f"The SlurmJob's API group: {WLM_GROUP} for the WLM operator's kind "
        f"(default: {SLURMLINK_GROUP}).",
    )(func)


def _namespace(client: HttpClient, namespace: str | None) -> str:
    return namespace or client.namespace or "default"


def _kind(group: str) -> Kind:
    if group == WLM_GROUP:
        from slurmlink.resources.bridge.wlmjob import WLM_SLURM_JOB

        return WLM_SLURM_JOB
    from slurmlink.resources.bridge.slurmjob import SLURM_JOB

    return SLURM_JOB


def _job_path(namespace: str, name: str, *rest: str) -> str:
    path = f"{PREFIX}/namespaces/{quote(namespace, safe='')}/slurmjobs/{quote(name, safe='')}"
    return path + "".join(f"/{part}" for part in rest)


def _group_params(group: str) -> dict[str, str]:
    return {"group": group} if group != SLURMLINK_GROUP else {}


def human_size(n: int) -> str:
    """``n`` bytes for people: 512 B, 1.5 KiB, 12.0 MiB, 3.2 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Progress:
    """One line on stderr, rewritten in place, for a big file when stderr is a terminal; else nothing."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = (total or 0) >= PROGRESS_FROM and sys.stderr.isatty()
        self._shown = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            self._show()

    def _show(self, end: str = "") -> None:
        total = self.total or 0
        share = f" ({100 * self.done // total}%)" if total else ""
        line = f"{self.label}: {human_size(self.done)} of {human_size(total)}{share}"
        click.echo(f"\r{line}\x1b[K{end}", err=True, nl=False)

    def finish(self) -> None:
        if self.enabled:
            self._show("\n")


# ---- sj upload -------------------------------------------------------------------------------------


@click.group("sj")
def sj() -> None:
    """A SlurmJob's files: upload its inputs, download its outputs.

    Its output (stdout and stderr) is read with `slurmlink logs sj NAME [-f]`.
    """


def _unpack_hint(name: str) -> str | None:
    """``tar`` or ``zip`` when ``name`` looks like an archive a job could have unpacked."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if not suffixes:
        return None
    if suffixes[-1] in _ARCHIVES:
        return _ARCHIVES[suffixes[-1]]
    if suffixes[-1] in _ARCHIVE_SUFFIXES and len(suffixes) > 1 and suffixes[-2] == ".tar":
        return _ARCHIVE_SUFFIXES[suffixes[-1]]
    return None


@sj.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_namespace_option
@click.option(
    "--name",
    default=None,
    help="The file name the upload keeps, under which a job's input lands (default: FILE's base name).",
)
@click.option(
    "--owner",
    type=click.IntRange(min=1),
    default=None,
    metavar="UID",
    help="Admins only: the uid of the user whose jobs may use the upload (a user's uploads are theirs).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["json", "id"]),
    default=None,
    help="json: the server's answer; id: only the upload's id (for scripts).",
)
@kubeconfig_options
def upload(
    file: Path,
    namespace: str | None,
    name: str | None,
    owner: int | None,
    output: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Upload FILE for your SlurmJobs' inputs and print its id.

    The file is streamed (big files show their progress on stderr) and its sha256, computed here as it
    is sent, must match the one the server computed. Use the id in a SlurmJob's spec:

    \b
      inputs:
        - {upload: up-5f2c0a9e1d3b4c7f, to: data}

    An upload is used only by jobs of its owner, in its namespace.
    """
    label = name or file.name
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise CliError(f"error: {file}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256()
    progress = Progress(f"uploading {label}", size)

    async def chunks() -> AsyncIterator[bytes]:
        # Never more than the Content-Length announced: a file that changes while it is sent fails here.
        sent = 0
        try:
            with file.open("rb") as handle:
                while sent < size:
                    chunk = handle.read(min(CHUNK, size - sent))
                    if not chunk:
                        break
                    sent += len(chunk)
                    digest.update(chunk)
                    progress.add(len(chunk))
                    yield chunk
                grew = bool(handle.read(1))
        except OSError as exc:
            raise CliError(f"error: {file}: {exc.strerror or exc}") from exc
        if sent != size or grew:
            raise CliError(
                f"error: {file} changed while it was uploaded; upload it again once it is complete"
            )

    async def body(client: HttpClient) -> dict[str, Any]:
        from slurmlink import jsonutil
        from slurmlink.resources.errors import ApiError

        ns = _namespace(client, namespace)
        params = {"name": label, **({"owner": str(owner)} if owner is not None else {})}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        async with client.stream(
            "POST",
            f"{PREFIX}/namespaces/{quote(ns, safe='')}/uploads",
            params=params,
            content=chunks(),
            headers=headers,
            read_timeout=TRANSFER_TIMEOUT,
        ) as response:
            await response.aread()
        try:
            answer = jsonutil.loads(response.content)
        except ValueError as exc:
            raise ApiError(500, "InternalError", f"the server's answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict) or not answer.get("id"):
            raise ApiError(500, "InternalError", "the server's answer names no upload id")
        return answer

    try:
        result = run_with_client(kubeconfig, context, body)
    finally:
        progress.finish()
    local = digest.hexdigest()
    if result.get("sha256") != local or result.get("size") != size:
        raise CliError(
            f"error: upload {result['id']} of {file} is damaged: the server received "
            f"{result.get('size')} bytes with sha256 {result.get('sha256')}, but {size} bytes with sha256 "
            f"{local} were sent; do not use it, upload the file again"
        )
    if output == "json":
        import json

        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    if output == "id":
        click.echo(result["id"])
        return
    click.echo(
        f"uploaded {file} as {result['id']} ({result.get('name') or label}, {human_size(size)}, "
        f"sha256 {local})"
    )
    click.echo("for a SlurmJob's spec:")
    click.echo("  inputs:")
    click.echo(f"    - upload: {result['id']}")
    click.echo(f"      sha256: {local}")
    click.echo("      to: .")
    hint = _unpack_hint(label)
    if hint:
        click.echo(f"      # unpack: {hint}    # to unpack the archive into `to` instead of keeping it whole")


# ---- sj download -----------------------------------------------------------------------------------


def output_path_error(path: object) -> str | None:
    """Why an output path the server listed cannot be written under the download directory (None: it can)."""
    if not isinstance(path, str) or not path:
        return "not a path"
    if "\x00" in path:
        return "it contains a NUL character"
    if path.startswith("/"):
        return "it is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "it contains '..'"
    if all(part in ("", ".") for part in parts):
        return "it names no file"
    return None


def _selected(outputs: list[dict[str, Any]], wanted: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """The outputs PATHs name (each a listed file, or a directory of some), all when none is given."""
    if not wanted:
        return outputs
    chosen: list[dict[str, Any]] = []
    for want in wanted:
        stem = want.strip("/")
        found = [o for o in outputs if o.get("path") == want or str(o.get("path", "")).startswith(stem + "/")]
        if not found:
            raise CliError(f'error: "{want}" is not among the outputs of {what} (status.outputs)')
        chosen.extend(o for o in found if o not in chosen)
    return chosen


class _FileProblem(Exception):
    """One output that could not be kept; the others are still downloaded."""


def _matches(target: Path, size: int, sha256: str) -> bool:
    """Whether ``target`` is already a regular file with this size and digest."""
    try:
        if not target.is_file() or target.is_symlink() or target.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with target.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha256
    except OSError:
        return False


def _make_parents(root: Path, dirs: list[str]) -> Path:
    """``root/dirs...``, made as needed, one component at a time: an existing component that is not a
    directory of its own (a link, a file) is refused, so nothing is ever made or written outside root."""
    here = root
    for part in dirs:
        here = here / part
        try:
            os.mkdir(here)
            continue
        except FileExistsError:
            pass
        if here.is_symlink():
            raise _FileProblem(
                f"{here} is a symbolic link; it is not followed, nothing is written through it"
            )
        if not here.is_dir():
            raise _FileProblem(f"{here} exists and is not a directory")
    return here


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@sj.command("download")
@click.argument("name")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@_namespace_option
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Directory to download into, made if missing (default: ./NAME).",
)
@_group_option
@kubeconfig_options
def download(
    name: str,
    paths: tuple[str, ...],
    namespace: str | None,
    to: Path | None,
    group: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Download the outputs of SlurmJob NAME: every file its status.outputs lists, or those under PATH.

    Files keep their paths relative to the job directory, under DIR. Each is checked against the size
    and sha256 the bridge recorded when it collected the outputs, and appears only once it matches
    (written to a temporary file, then renamed); a file that does not match is not kept and the
    command fails. A file already in DIR with the right digest is not downloaded again. Paths that
    would leave DIR are refused.

    Example: slurmlink sj download fold results/ --to ~/fold-run-3
    """
    from slurmlink.client.http import UnreachableError
    from slurmlink.resources.errors import ApiError

    group = group or SLURMLINK_GROUP
    kind = _kind(group)
    what = f'{kind.plural}.{kind.group} "{name}"'
    dest = to if to is not None else Path(name)
    failures: list[str] = []
    done = {"files": 0, "bytes": 0, "current": 0, "chosen": 0}

    async def fetch(client: HttpClient, ns: str, entry: dict[str, Any], root: Path) -> None:
        path, size, want = str(entry["path"]), int(entry.get("size") or 0), str(entry.get("sha256") or "")
        *dirs, base = [p for p in path.split("/") if p not in ("", ".")]
        parent = _make_parents(root, dirs)
        target = parent / base
        if _matches(target, size, want):
            done["current"] += 1
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=parent)
        kept = False
        try:
            digest, got = hashlib.sha256(), 0
            progress = Progress(f"downloading {path}", size)
            with os.fdopen(fd, "wb") as handle:
                async with client.stream(
                    "GET",
                    _job_path(ns, name, "outputs", quote(path, safe="/")),
                    params=_group_params(group),
                    read_timeout=TRANSFER_TIMEOUT,
                ) as response:
                    async for chunk in response.aiter_bytes(CHUNK):
                        got += len(chunk)
                        if got > size:
                            break  # more than listed: it changed; stop before filling the disk
                        digest.update(chunk)
                        handle.write(chunk)
                        progress.add(len(chunk))
            progress.finish()
            if got != size or digest.hexdigest() != want:
                got_text = (
                    f"more than {size} bytes"
                    if got > size
                    else f"{got} bytes with sha256 {digest.hexdigest()}"
                )
                raise _FileProblem(
                    f"the server sent {got_text}, but status.outputs lists {size} bytes with sha256 {want}: "
                    "the file changed after the job's outputs were collected, or was damaged on the way; "
                    "it was not kept"
                )
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
            kept = True
            done["files"] += 1
            done["bytes"] += size
        finally:
            if not kept:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    async def body(client: HttpClient) -> None:
        ns = _namespace(client, namespace)
        obj: Obj = await client.get(kind, ns, name)
        status = obj.get("status") or {}
        outputs = [o for o in status.get("outputs") or [] if isinstance(o, dict)]
        phase = status.get("phase") or "Pending"
        if not outputs and not paths:
            if phase in _FINISHED:
                click.echo(f"{what} has no collected outputs (it ended {phase})", err=True)
                return
            raise CliError(
                f"error: {what} has no outputs yet: it is {phase}; outputs are collected when it has ended"
            )
        chosen = _selected(outputs, paths, what)
        problems = [(o.get("path"), output_path_error(o.get("path"))) for o in chosen]
        refused = [f'"{path}" ({why})' for path, why in problems if why is not None]
        if refused:
            raise CliError(
                f"error: {what} lists outputs that would be written outside {dest}, refused: "
                + ", ".join(refused)
            )
        try:
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
        except OSError as exc:
            raise CliError(f"error: cannot make {dest}: {exc.strerror or exc}") from exc
        done["chosen"] = len(chosen)
        for entry in chosen:
            try:
                await fetch(client, ns, entry, root)
                continue
            except UnreachableError:
                raise
            except ApiError as exc:
                if exc.code in (401, 403):
                    raise
                problem = error_text(exc)
            except _FileProblem as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"cannot write it: {exc.strerror or exc}"
            failures.append(entry["path"])
            click.echo(f"error: {entry['path']}: {problem}", err=True)

    run_with_client(kubeconfig, context, body)
    files = "1 file" if done["files"] == 1 else f"{done['files']} files"
    summary = f"{files} ({human_size(done['bytes'])}) downloaded into {dest}"
    if done["current"]:
        summary += f", {done['current']} already there"
    if failures:
        raise CliError(f"error: {len(failures)} of {done['chosen']} outputs failed; {summary}")
    if done["files"] or done["current"]:
        click.echo(summary)


# ---- logs --------------------------------------------------------------------------------------------


_LOG_NAMES = ("sj", "slurmjob", "slurmjobs")


def log_group(kind_name: str, group: str | None) -> str:
    """The SlurmJob group KIND (sj, slurmjob, slurmjobs, optionally .GROUP) and ``--group`` name."""
    base, _, kind_group = kind_name.strip().lower().partition(".")
    if base not in _LOG_NAMES or kind_group not in ("", SLURMLINK_GROUP, WLM_GROUP):
        raise CliError(
            f"error: logs are kept for SlurmJobs only: KIND is sj, slurmjob, slurmjobs, "
            f'slurmjobs.{SLURMLINK_GROUP} or slurmjobs.{WLM_GROUP}, not "{kind_name}"'
        )
    if kind_group and group and kind_group != group:
        raise CliError(f"error: {kind_name} is in group {kind_group}, but --group says {group}")
    return kind_group or group or SLURMLINK_GROUP


@click.command("logs")
@click.argument("kind_name", metavar="KIND")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the job writes until it has ended.")
@_namespace_option
@_group_option
@kubeconfig_options
def logs(
    kind_name: str,
    name: str,
    follow: bool,
    namespace: str | None,
    group: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Print a SlurmJob's output; -f follows it until the job has ended.

    The output is the job's slurm-JOBID.out (stdout, with stderr unless the script split them), as
    `kubectl logs` prints a pod's. With -f, waits for a job that has not started yet and follows its
    output until the job has ended; Ctrl-C stops.

    KIND is sj, slurmjob or slurmjobs, optionally with its group: slurmjobs.wlm.sylabs.io for the WLM
    operator's kind (or give --group).

    Example: slurmlink logs sj fold -f
    """
    chosen = log_group(kind_name, group)
    kind = _kind(chosen)
    out: BinaryIO = sys.stdout.buffer

    async def body(client: HttpClient) -> None:
        from slurmlink.resources.errors import ApiError

        ns = _namespace(client, namespace)
        params = {**_group_params(chosen), **({"follow": "true"} if follow else {})}
        waiting = False
        while True:
            try:
                async with client.stream(
                    "GET",
                    _job_path(ns, name, "log"),
                    params=params,
                    read_timeout=None if follow else TRANSFER_TIMEOUT,
                ) as response:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        out.flush()
                return
            except ApiError as exc:
                if not follow or exc.code != 404:
                    raise
                obj = await client.get(kind, ns, name)  # 404 here: the job itself is not there
                phase = (obj.get("status") or {}).get("phase") or "Pending"
                if phase in _FINISHED:
                    raise
                if not waiting:
                    click.echo(
                        f'waiting for {kind.plural}.{kind.group} "{name}" to start ({phase})', err=True
                    )
                    waiting = True
                await asyncio.sleep(LOG_WAIT)

    try:
        run_with_client(kubeconfig, context, body)
    except KeyboardInterrupt:  # Ctrl-C is how a followed log ends early
        pass
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
