"""Install slurmlink's burst buffer plugin next to slurm.conf (``slurmlink slurm install``).

Writes ``burst_buffer.lua`` (rendered with the gateway's socket path), ``burst_buffer.conf`` and the plugin's
kubeconfig ``slurm-dws.kubeconfig`` into Slurm's configuration directory, where the burst_buffer/lua plugin
looks for them (``get_extra_conf_path()``). The kubeconfig is either copied from a file or issued on the spot
from the server's CA. Every file is written atomically, so a slurmctld reading ``burst_buffer.lua`` for a
callback never sees half a script.

Files we did not write are never lost: a differing ``burst_buffer.lua``/``.conf``/kubeconfig that is not
recorded in our manifest (``.slurmlink-plugin.json``, the hashes of what we wrote last time) is kept as
``<name>.bak-<timestamp>`` first. Re-running with the same inputs changes nothing, so it can be part of any
provisioning run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slurmlink.auth.issue import IssueError, issue_kubeconfig, kubeconfig_is_current
from slurmlink.auth.kubeconfig import KubeconfigError, load_kubeconfig
from slurmlink.auth.pki import atomic_write_bytes
from slurmlink.slurm import slurmconf

LUA_NAME = "burst_buffer.lua"
CONF_NAME = "burst_buffer.conf"
KUBECONFIG_NAME = "slurm-dws.kubeconfig"
MANIFEST_NAME = ".slurmlink-plugin.json"
BURST_BUFFER_TYPE = "burst_buffer/lua"
#: Used when ``slurmctld -V`` cannot tell: the oldest API the plugin supports (Debian 12's Slurm).
FALLBACK_SLURM_API = "22.05"
DEFAULT_USER = "slurm-dws"
DEFAULT_NAMESPACE = "slurm"
WORKLOAD_MANAGER_ROLE = "workload-manager"

LogFn = Callable[[str], None]


class InstallError(RuntimeError):
    """The plugin cannot be installed as asked; the message says how to fix it."""


def _stderr_log(message: str) -> None:
    print(f"[slurm install] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class InstallResult:
    """What ``install_plugin`` did, and what the operator has to do next."""

    conf_dir: Path
    socket_path: Path
    slurm_api: str
    kubeconfig: Path
    #: Files (re)written by this run, in the order written.
    written: tuple[Path, ...]
    #: Files that already had the wanted content.
    unchanged: tuple[Path, ...]
    #: Copies of foreign files that were replaced.
    backups: tuple[Path, ...]
    #: slurm.conf enables ``burst_buffer/lua`` (now or already). False also when there is no slurm.conf.
    enabled: bool
    #: This run added the BurstBufferType line to slurm.conf (slurmctld must be restarted).
    slurm_conf_changed: bool
    #: The user slurmctld runs as (SlurmUser), who must run the gateway.
    slurm_user: str
    #: Warnings the operator should read (e.g. a different BurstBufferType is configured).
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return bool(self.written)

    @property
    def gateway_command(self) -> list[str]:
        """The command line that starts the gateway this plugin talks to."""
        return [
            "slurmlink",
            "slurm",
            "gateway",
            "--kubeconfig",
            str(self.kubeconfig),
            "--socket",
            str(self.socket_path),
            "--slurm-conf",
            str(self.conf_dir / "slurm.conf"),
        ]

    def next_steps(self) -> list[str]:
        """Human instructions, in order, for finishing the installation."""
        command = shlex.join(self.gateway_command)
        if self.slurm_user != "root":
            command = f"runuser -u {shlex.quote(self.slurm_user)} -- {command}"
        steps = [
            f"Start the gateway as SlurmUser ({self.slurm_user}) before slurmctld, and keep it running "
            f"(e.g. as a systemd service ordered Before=slurmctld.service):\n    {command}",
        ]
        conf_path = self.conf_dir / "slurm.conf"
        if not self.enabled:
            steps.append(
                f"Enable the plugin: add 'BurstBufferType={BURST_BUFFER_TYPE}' to {conf_path} "
                "(or re-run with --enable), then restart slurmctld."
            )
        elif self.slurm_conf_changed:
            steps.append(
                "Restart slurmctld: BurstBufferType changed, which 'scontrol reconfigure' does not pick up."
            )
        elif self.conf_dir / CONF_NAME in self.written:
            steps.append("Run 'scontrol reconfigure' so slurmctld reads the new burst_buffer.conf.")
        steps.append(
            "Check the plugin's credentials reach the API: kubectl --kubeconfig "
            f"{shlex.quote(str(self.kubeconfig))} get workflows.dataworkflowservices.github.io -A"
        )
        return steps


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from exc


def detect_slurm_api(log: LogFn = _stderr_log) -> str:
    """The burst_buffer/lua API version of the installed slurmctld (``slurmctld -V``), e.g. ``22.05``.

    Falls back to :data:`FALLBACK_SLURM_API` with a warning, since installing on a host without slurmctld
    (config management building files centrally) must still work.
    """
    from slurmlink.slurm.plugin import slurm_api_version

    try:
        probe = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"warning: cannot run 'slurmctld -V' ({exc}); assuming the Slurm {FALLBACK_SLURM_API} API")
        return FALLBACK_SLURM_API
    text = (probe.stdout or probe.stderr).strip()
    if probe.returncode != 0:
        log(f"warning: 'slurmctld -V' failed ({text!r}); assuming the Slurm {FALLBACK_SLURM_API} API")
        return FALLBACK_SLURM_API
    try:
        return slurm_api_version(text)
    except ValueError:
        log(f"warning: cannot parse 'slurmctld -V' output {text!r}; assuming the {FALLBACK_SLURM_API} API")
        return FALLBACK_SLURM_API


def _relative_file_refs(path: Path) -> list[str]:
    """Keys of a kubeconfig that point at files by relative path; those break once the file is copied."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    refs = []
    for section, inner, keys in [
        ("clusters", "cluster", ("certificate-authority",)),
        ("users", "user", ("client-certificate", "client-key", "tokenFile")),
    ]:
        for entry in (config or {}).get(section) or []:
            body = entry.get(inner) if isinstance(entry, dict) else None
            if not isinstance(body, dict):
                continue
            for key in keys:
                value = body.get(key)
                if value and not body.get(f"{key}-data") and not Path(str(value)).expanduser().is_absolute():
                    refs.append(f"{key}: {value}")
    return refs


def _validate_kubeconfig(path: Path, what: str) -> None:
    """Fail unless ``path`` names a server and credentials the gateway can use."""
    try:
        creds = load_kubeconfig(path)
    except KubeconfigError as exc:
        raise InstallError(f"{what} is not usable: {exc}") from exc
    if creds.cert_pem is None and creds.token is None:
        raise InstallError(
            f"{what} {path} has no credentials (client certificate or token) for its current context; "
            "issue one with 'slurmlink kubeconfig --user slurm-dws --role workload-manager --namespace slurm'"
        )


class _Installer:
    """One run of :func:`install_plugin`; collects what it did into an :class:`InstallResult`."""

    def __init__(self, conf_dir: Path, log: LogFn) -> None:
        self.conf_dir = conf_dir
        self.log = log
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.written: list[Path] = []
        self.unchanged: list[Path] = []
        self.backups: list[Path] = []
        self.notes: list[str] = []
        self.manifest_path = conf_dir / MANIFEST_NAME
        self.manifest: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            files = json.loads(self.manifest_path.read_text()).get("files", {})
            self.manifest = {str(k): str(v) for k, v in files.items()}

    def _backup(self, path: Path, old: bytes, mode: int) -> None:
        backup = path.with_name(f"{path.name}.bak-{self.stamp}")
        counter = 1
        while backup.exists():
            counter += 1
            backup = path.with_name(f"{path.name}.bak-{self.stamp}-{counter}")
        atomic_write_bytes(backup, old, mode)
        self.backups.append(backup)
        self.log(f"kept the existing {path.name}, which slurmlink did not write, as {backup}")

    def put(self, name: str, data: bytes, mode: int, *, backup_foreign: bool) -> bool:
        """Write ``name`` unless it already holds ``data``; back up a foreign file first. True if written."""
        path = self.conf_dir / name
        old = _read_bytes(path)
        if old == data:
            self.unchanged.append(path)
            with contextlib.suppress(OSError):
                if path.stat().st_mode & 0o7777 != mode:
                    path.chmod(mode)
            self.manifest[name] = _sha256(data)
            return False
        if old is not None and backup_foreign and self.manifest.get(name) != _sha256(old):
            self._backup(path, old, 0o600 if mode & 0o077 == 0 else 0o644)
        try:
            atomic_write_bytes(path, data, mode)
        except OSError as exc:
            raise InstallError(f"cannot write {path}: {exc.strerror}") from exc
        self.written.append(path)
        self.manifest[name] = _sha256(data)
        self.log(f"wrote {path}")
        return True

    def keep(self, name: str) -> None:
        """Record an existing file as ours-as-is (e.g. a kubeconfig that is still valid)."""
        path = self.conf_dir / name
        self.unchanged.append(path)
        data = _read_bytes(path)
        if data is not None:
            self.manifest[name] = _sha256(data)

    def save_manifest(self, extra: dict[str, str]) -> None:
        content = {"files": dict(sorted(self.manifest.items())), **extra}
        data = (json.dumps(content, indent=2) + "\n").encode()
        if _read_bytes(self.manifest_path) != data:
            atomic_write_bytes(self.manifest_path, data, 0o644)


def _slurm_user(conf_dir: Path) -> str:
    """SlurmUser from slurm.conf (Slurm's default is root)."""
    return slurmconf.read_value(conf_dir / "slurm.conf", "SlurmUser") or "root"


def _enable(conf_dir: Path, installer: _Installer) -> tuple[bool, bool]:
    """Append ``BurstBufferType=burst_buffer/lua`` to slurm.conf unless a BurstBufferType is set.

    Returns ``(enabled, changed)``. A different BurstBufferType is left alone and reported: replacing
    another site's burst buffer plugin is a decision for a human.
    """
    slurm_conf = conf_dir / "slurm.conf"
    try:
        text = slurm_conf.read_text()
        st = slurm_conf.stat()
    except FileNotFoundError:
        raise InstallError(
            f"cannot enable the plugin: {slurm_conf} does not exist; pass the directory that holds "
            "slurm.conf as --conf-dir, or leave out --enable and add the BurstBufferType line yourself"
        ) from None
    except OSError as exc:
        raise InstallError(f"cannot read {slurm_conf}: {exc.strerror}") from exc
    try:
        value = slurmconf.value(slurmconf.parse(text, source=slurm_conf), "BurstBufferType")
    except slurmconf.SlurmConfError as exc:
        raise InstallError(str(exc)) from exc
    if value is not None:
        if value == BURST_BUFFER_TYPE:
            return True, False
        installer.notes.append(
            f"{slurm_conf} already sets BurstBufferType={value}; left unchanged. Change it to "
            f"{BURST_BUFFER_TYPE} by hand and restart slurmctld to use slurmlink's plugin."
        )
        installer.log(f"warning: {installer.notes[-1]}")
        return False, False
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"# Added by 'slurmlink slurm install --enable'.\nBurstBufferType={BURST_BUFFER_TYPE}\n"
    atomic_write_bytes(slurm_conf, text.encode(), st.st_mode & 0o7777)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(slurm_conf, st.st_uid, st.st_gid)
    installer.written.append(slurm_conf)
    installer.log(f"added BurstBufferType={BURST_BUFFER_TYPE} to {slurm_conf}")
    return True, True


def _is_enabled(conf_dir: Path) -> bool:
    return slurmconf.read_value(conf_dir / "slurm.conf", "BurstBufferType") == BURST_BUFFER_TYPE


def _install_kubeconfig(
    installer: _Installer,
    target: Path,
    kubeconfig_source: Path | None,
    server_state_dir: Path | None,
    user: str,
    namespace: str,
    backup_foreign: bool,
) -> None:
    """Copy, issue or keep the plugin's kubeconfig (mode 0600: it holds a private key or token)."""
    if kubeconfig_source is not None:
        source = Path(kubeconfig_source).expanduser().absolute()
        if not source.is_file():
            raise InstallError(f"kubeconfig {source} does not exist")
        _validate_kubeconfig(source, "kubeconfig")
        refs = _relative_file_refs(source)
        if refs and source.resolve() != target.resolve():
            raise InstallError(
                f"kubeconfig {source} refers to files by relative path ({', '.join(refs)}), which would "
                "break once copied; embed them first: kubectl config view --kubeconfig "
                f"{shlex.quote(str(source))} --flatten --minify > FILE"
            )
        if target.exists() and source.resolve() == target.resolve():
            installer.keep(KUBECONFIG_NAME)
            return
        data = _read_bytes(source)
        assert data is not None
        installer.put(KUBECONFIG_NAME, data, 0o600, backup_foreign=backup_foreign)
        return
    if server_state_dir is not None:
        state = Path(server_state_dir).expanduser().absolute()
        if kubeconfig_is_current(target, state, user, WORKLOAD_MANAGER_ROLE, namespace):
            installer.log(f"{target} is still valid for user {user} in namespace {namespace}; keeping it")
            installer.keep(KUBECONFIG_NAME)
            return
        try:
            config = issue_kubeconfig(state, user, WORKLOAD_MANAGER_ROLE, namespace)
        except IssueError as exc:
            raise InstallError(f"cannot issue the plugin's kubeconfig: {exc}") from exc
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        installer.put(KUBECONFIG_NAME, text.encode(), 0o600, backup_foreign=backup_foreign)
        installer.log(f"issued credentials for {user} (role {WORKLOAD_MANAGER_ROLE}, namespace {namespace})")
        return
    if target.exists():
        _validate_kubeconfig(target, "the installed kubeconfig")
        installer.keep(KUBECONFIG_NAME)
        return
    raise InstallError(
        f"no kubeconfig for the plugin in {target.parent}: pass --kubeconfig FILE to copy one (e.g. made "
        f"with 'slurmlink kubeconfig --user {user} --role {WORKLOAD_MANAGER_ROLE} --namespace {namespace}')"
        " or --server-state-dir DIR to issue one from the server's CA on this host"
    )


def _chown_to(path: Path, user: str, log: LogFn) -> None:
    """Hand ``path`` to ``user`` (the gateway runs as SlurmUser and must read it); root only."""
    if user == "root" or os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log(f"warning: SlurmUser {user} does not exist here; {path} stays owned by root")
        return
    st = path.stat()
    if (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        log(f"{path} now belongs to SlurmUser {user}")


def install_plugin(
    conf_dir: Path,
    *,
    socket_path: Path,
    kubeconfig_source: Path | None = None,
    server_state_dir: Path | None = None,
    user: str = DEFAULT_USER,
    namespace: str = DEFAULT_NAMESPACE,
    slurm_api: str | None = None,
    sync_timeout: float | None = None,
    connect_retry: float | None = None,
    enable: bool = False,
    backup_foreign: bool = True,
    log: LogFn = _stderr_log,
) -> InstallResult:
    """Install burst_buffer.lua, burst_buffer.conf and slurm-dws.kubeconfig into ``conf_dir``.

    The kubeconfig comes from exactly one of ``kubeconfig_source`` (copied) and ``server_state_dir``
    (issued for ``user`` with role workload-manager in ``namespace``); neither is needed when ``conf_dir``
    already holds one. ``slurm_api`` None means: ask ``slurmctld -V``. ``enable`` appends
    ``BurstBufferType=burst_buffer/lua`` to slurm.conf if it sets no BurstBufferType. ``backup_foreign``
    False overwrites files we did not write without a backup (for directories slurmlink owns entirely,
    like the dev cluster's).
    """
    from slurmlink.slurm import plugin

    if kubeconfig_source is not None and server_state_dir is not None:
        raise InstallError(
            "give either a kubeconfig to copy or the server's state directory to issue one from, not both"
        )
    conf_dir = Path(conf_dir).expanduser().absolute()
    if not conf_dir.is_dir():
        raise InstallError(f"{conf_dir} is not a directory; pass the directory that holds slurm.conf")
    socket_path = Path(socket_path).expanduser()
    if not socket_path.is_absolute():
        raise InstallError(f"the gateway socket path must be absolute, got {socket_path}")
    if len(os.fsencode(str(socket_path))) > 107:
        raise InstallError(f"socket path {socket_path} is longer than the 107 bytes a Unix socket allows")
    if slurm_api is None:
        slurm_api = detect_slurm_api(log)
    elif not re.fullmatch(r"\d+\.\d+", slurm_api):
        raise InstallError(f"--slurm-api must look like 22.05 or 23.02, got {slurm_api!r}")
    kwargs: dict[str, float] = {}
    for name, value in (("sync_timeout", sync_timeout), ("connect_retry", connect_retry)):
        if value is not None:
            if value <= 0:
                raise InstallError(f"{name.replace('_', '-')} must be positive, got {value:g}")
            kwargs[name] = int(value) if float(value).is_integer() else value

    installer = _Installer(conf_dir, log)
    target = conf_dir / KUBECONFIG_NAME
    _install_kubeconfig(
        installer, target, kubeconfig_source, server_state_dir, user, namespace, backup_foreign
    )
    try:
        lua = plugin.render_burst_buffer_lua(socket_path, slurm_api=slurm_api, **kwargs)
    except ValueError as exc:
        raise InstallError(f"cannot render burst_buffer.lua: {exc}") from exc
    installer.put(LUA_NAME, lua.encode(), 0o644, backup_foreign=backup_foreign)
    installer.put(CONF_NAME, plugin.burst_buffer_conf_text().encode(), 0o644, backup_foreign=backup_foreign)
    slurm_user = _slurm_user(conf_dir)
    _chown_to(target, slurm_user, log)
    installer.save_manifest({"socket": str(socket_path), "slurm_api": slurm_api})

    if enable:
        enabled, conf_changed = _enable(conf_dir, installer)
    else:
        enabled, conf_changed = _is_enabled(conf_dir), False
    return InstallResult(
        conf_dir=conf_dir,
        socket_path=socket_path,
        slurm_api=slurm_api,
        kubeconfig=target,
        written=tuple(installer.written),
        unchanged=tuple(installer.unchanged),
        backups=tuple(installer.backups),
        enabled=enabled,
        slurm_conf_changed=conf_changed,
        slurm_user=slurm_user,
        notes=tuple(installer.notes),
    )
