"""Real kubectl binaries for tests: Debian 12's kubectl 1.20 and the image's kubectl 1.3x.

``kubectl_120()`` takes kubectl from Debian 12's ``kubernetes-client`` package (1.20.x), fetched once
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache directory
(``$SLURMLINK_TEST_CACHE``, default ``~/.cache/slurmlink-tests``); the package is never installed,
because on this image the ``kubectl`` package (Google Cloud SDK) owns /usr/bin/kubectl and the two
conflict.

``kubectl_132()`` checks /usr/bin/kubectl.  On this image that is the Google Cloud SDK *dispatcher*:
before each command that talks to a server it asks the server for its version and re-executes the
``kubectl.1.<minor>`` binary next to it that matches the server (1.27 ... 1.33 are shipped), caching
the server version under ``$HOME/.kube/cache``.  A test against our API server would then run
whichever kubectl matches the version our server reports, not 1.32.  So when /usr/bin/kubectl is the
dispatcher, ``kubectl_132()`` returns the plain, non-dispatching binary of the dispatcher's own
version that sits beside it (``/usr/lib/google-cloud-sdk/bin/kubectl.1.32``).

Both raise ``KubectlUnavailable`` with the reason when the binary can't be had: tests fail, never skip.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "SLURMLINK_TEST_CACHE"
SYSTEM_KUBECTL = Path("/usr/bin/kubectl")
DEBIAN_PACKAGE = "kubernetes-client"
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)")

_session_home: Path | None = None


class KubectlUnavailable(RuntimeError):
    """A kubectl binary of the wanted version can't be found or fetched."""


def cache_dir() -> Path:
    """The test download cache: ``$SLURMLINK_TEST_CACHE`` or ``~/.cache/slurmlink-tests``."""
    configured = os.environ.get(CACHE_ENV)
    path = Path(configured) if configured else Path.home() / ".cache" / "slurmlink-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def session_home() -> Path:
    """A private HOME for kubectl, one per test process (so its discovery cache is per session).

    Removed when the process exits.
    """
    global _session_home
    if _session_home is None:
        _session_home = Path(tempfile.mkdtemp(prefix="slurmlink-kubectl-home-"))
        atexit.register(shutil.rmtree, _session_home, True)
    return _session_home


def _env(home: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("KUBECONFIG", "KUBECACHEDIR"):
        env.pop(name, None)
    env["HOME"] = str(home if home is not None else session_home())
    return env


def run_kubectl(
    binary: Path | str,
    kubeconfig: Path | str,
    *args: str,
    timeout: float = 60,
    input: str | None = None,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``binary --kubeconfig=KUBECONFIG ARGS...`` and return the completed process (never raises
    on a non-zero exit; a timeout raises ``subprocess.TimeoutExpired``).

    HOME is the per-session private home (``session_home()``) unless ``home`` is given, and
    ``KUBECONFIG`` is removed from the environment, so nothing of the user's ~/.kube is read or written.
    """
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(home),
        check=False,
    )


def client_version(binary: Path | str) -> str:
    """The ``gitVersion`` that ``kubectl version --client -o json`` reports, e.g. ``v1.20.2``."""
    try:
        result = subprocess.run(
            [str(binary), "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(None),
            check=False,
        )
    except OSError as err:
        raise KubectlUnavailable(f"cannot run {binary}: {err}") from err
    if result.returncode != 0:
        raise KubectlUnavailable(
            f"`{binary} version --client -o json` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    try:
        return str(json.loads(result.stdout)["clientVersion"]["gitVersion"])
    except (ValueError, KeyError, TypeError) as err:
        raise KubectlUnavailable(
            f"unexpected `kubectl version` output from {binary}: {result.stdout!r}"
        ) from err


def _major_minor(git_version: str) -> tuple[int, int]:
    match = _VERSION_RE.match(git_version)
    if not match:
        raise KubectlUnavailable(f"cannot parse kubectl version {git_version!r}")
    return int(match.group(1)), int(match.group(2))


# -- kubectl 1.20 from Debian 12's kubernetes-client ------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_tool(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KubectlUnavailable(f"`{' '.join(cmd)}` could not run: {err}") from err


def _download_deb(workdir: Path) -> Path:
    """``apt-get download kubernetes-client`` into ``workdir``; ``apt-get update`` and retry once."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise KubectlUnavailable(
                f"`{tool}` not found: kubectl 1.20 is taken from Debian's {DEBIAN_PACKAGE}"
            )
    os.chmod(workdir, 0o755)  # lets apt's _apt user write there when it can reach the directory
    cmd = ["apt-get", "download", DEBIAN_PACKAGE]
    first = _run_tool(cmd, workdir, timeout=600)
    if first.returncode != 0:
        if os.geteuid() != 0:
            raise KubectlUnavailable(
                f"`apt-get download {DEBIAN_PACKAGE}` failed (exit {first.returncode}) and we are not root, "
                f"so cannot run `apt-get update`:\n{first.stderr.strip()}"
            )
        update = _run_tool(["apt-get", "update"], workdir, timeout=900)
        second = _run_tool(cmd, workdir, timeout=600)
        if second.returncode != 0:
            raise KubectlUnavailable(
                f"`apt-get download {DEBIAN_PACKAGE}` failed even after `apt-get update` "
                f"(exit {update.returncode}): first try:\n{first.stderr.strip()}\n"
                f"apt-get update:\n{update.stderr.strip()}\nsecond try:\n{second.stderr.strip()}"
            )
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise KubectlUnavailable(f"expected one {DEBIAN_PACKAGE} .deb in {workdir}, found {debs}")
    return debs[0]


def _fetch_kubernetes_client(target: Path) -> None:
    """Download Debian's kubernetes-client and unpack it (not install it) at ``target``."""
    parent = target.parent
    workdir = Path(tempfile.mkdtemp(prefix="download-", dir=parent))
    try:
        deb = _download_deb(workdir)
        unpacked = workdir / "root"
        result = _run_tool(["dpkg-deb", "-x", str(deb), str(unpacked)], workdir, timeout=300)
        if result.returncode != 0 or not (unpacked / "usr/bin/kubectl").is_file():
            raise KubectlUnavailable(
                f"`dpkg-deb -x {deb.name}` gave no usr/bin/kubectl: {result.stderr.strip()}"
            )
        (unpacked / "PACKAGE").write_text(deb.name + "\n")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kubectl_120() -> Path:
    """Path of a real kubectl 1.20 (Debian 12's kubernetes-client), fetched into the cache if needed."""
    cache = cache_dir()
    target = cache / DEBIAN_PACKAGE
    binary = target / "usr" / "bin" / "kubectl"
    with _locked(cache / f".{DEBIAN_PACKAGE}.lock"):
        version = None
        if binary.is_file():
            with contextlib.suppress(KubectlUnavailable):
                version = client_version(binary)
        if version is None or _major_minor(version) != (1, 20):
            _fetch_kubernetes_client(target)  # nothing cached, or a broken or wrong cached copy
            version = client_version(binary)
    if _major_minor(version) != (1, 20):
        package = (target / "PACKAGE").read_text().strip() if (target / "PACKAGE").exists() else "?"
        raise KubectlUnavailable(f"{binary} (from {package}) reports {version}, not v1.20.x")
    return binary


# -- kubectl 1.3x from the image --------------------------------------------------------------------


def kubectl_132() -> Path:
    """Path of the image's kubectl 1.3x (1.32 on this image; a newer one is accepted).

    When /usr/bin/kubectl is the Google Cloud SDK dispatcher, the plain binary of the same version
    next to it is returned instead (see the module docstring).
    """
    if not SYSTEM_KUBECTL.exists():
        raise KubectlUnavailable(
            f"{SYSTEM_KUBECTL} is missing. On this image it comes with the preinstalled `kubectl` package "
            "(Google Cloud SDK, kubectl 1.32); Debian 12's own `kubernetes-client` is only 1.20."
        )
    version = client_version(SYSTEM_KUBECTL)
    major, minor = _major_minor(version)
    if (major, minor) < (1, 30):
        raise KubectlUnavailable(f"{SYSTEM_KUBECTL} reports {version}; a kubectl 1.30 or newer is needed")
    if not version.endswith("-dispatcher"):
        return SYSTEM_KUBECTL
    plain = SYSTEM_KUBECTL.resolve().parent / f"kubectl.{major}.{minor}"
    if not os.access(plain, os.X_OK):
        raise KubectlUnavailable(
            f"{SYSTEM_KUBECTL} is a version dispatcher ({version}) that would run whichever kubectl matches "
            f"the server, and its plain kubectl {major}.{minor} ({plain}) is missing"
        )
    plain_version = client_version(plain)
    if _major_minor(plain_version) != (major, minor):
        raise KubectlUnavailable(f"{plain} reports {plain_version}, expected v{major}.{minor}.x")
    return plain


def release_patch(index: int, *, clear_error: bool = False) -> str:
    """The seeds' JSON patch that marks driver entry ``index`` complete (and optionally drops its error)."""
    ops = [
        f'{{"op":"replace", "path":"/status/drivers/{index}/status", "value": "Completed"}}',
        f'{{"op":"replace", "path":"/status/drivers/{index}/completed", "value": true}}',
    ]
    if clear_error:
        ops.append(f'{{"op":"remove", "path":"/status/drivers/{index}/error"}}')
    return "[" + ", ".join(ops) + "]"
