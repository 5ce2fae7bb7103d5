"""``slurmlink slurm install``: plugin files, credentials that work against a real server, backups, errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.slurm.install import (
    CONF_NAME,
    KUBECONFIG_NAME,
    LUA_NAME,
    InstallError,
    InstallResult,
    install_plugin,
)
from slurmlink.slurm.plugin import burst_buffer_conf_text, lua_string_literal
from support.server import ServerProcess

G = "dataworkflowservices.github.io"
GV = f"/apis/{G}/v1alpha2"

pytestmark = pytest.mark.timeout(120)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _conf_dir(tmp_path: Path, slurm_conf: str | None = None) -> Path:
    conf_dir = tmp_path / "etc-slurm"
    conf_dir.mkdir()
    if slurm_conf is not None:
        (conf_dir / "slurm.conf").write_text(slurm_conf)
    return conf_dir


def _install(conf_dir: Path, logs: list[str] | None = None, **kw: object) -> InstallResult:
    kw.setdefault("socket_path", conf_dir.parent / "gw.sock")
    kw.setdefault("slurm_api", "22.05")
    return install_plugin(conf_dir, log=(logs if logs is not None else []).append, **kw)  # type: ignore[arg-type]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "slurm", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# ---------------------------------------------------------------- issued from the server's state dir


def test_install_from_server_state_dir_writes_plugin_and_working_credentials(
    server: ServerProcess, tmp_path: Path
) -> None:
    conf_dir = _conf_dir(tmp_path)
    socket_path = tmp_path / "run" / "slurm-bb.sock"
    result = _install(conf_dir, socket_path=socket_path, server_state_dir=server.state_dir)

    lua, conf, kubeconfig = conf_dir / LUA_NAME, conf_dir / CONF_NAME, conf_dir / KUBECONFIG_NAME
    assert set(result.written) == {lua, conf, kubeconfig}
    assert result.backups == () and result.unchanged == ()
    assert (_mode(lua), _mode(conf), _mode(kubeconfig)) == (0o644, 0o644, 0o600)
    assert f"local SOCKET_PATH = {lua_string_literal(str(socket_path))}" in lua.read_text()
    assert 'local SLURM_API = "22.05"' in lua.read_text()
    assert conf.read_text() == burst_buffer_conf_text()
    assert not list(conf_dir.glob("*.tmp")) and not list(conf_dir.glob(".*.tmp"))

    # The issued identity: user slurm-dws, role workload-manager, namespace slurm, this server and CA.
    creds = load_kubeconfig(kubeconfig)
    assert creds.server == server.url and creds.namespace == "slurm"
    assert creds.ca_pem == server.ca_file.read_bytes()
    assert creds.cert_pem is not None
    subject = x509.load_pem_x509_certificate(creds.cert_pem).subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["slurm-dws"]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "slurmlink:workload-manager"
    ]

    # ...and it works against the real server, with exactly the workload-manager's rights.
    with server.client(kubeconfig) as wlm:
        listed = wlm.get(f"{GV}/namespaces/slurm/workflows")
        assert listed.status_code == 200, listed.text
        assert listed.json()["kind"] == "WorkflowList"
        rule = {
            "apiVersion": f"{G}/v1alpha2",
            "kind": "DWDirectiveRule",
            "metadata": {"name": "sneaky", "namespace": "dws-system"},
            "spec": [],
        }
        created = wlm.post(f"{GV}/namespaces/dws-system/dwdirectiverules", json=rule)
        assert created.status_code == 403, created.text
        assert 'User "slurm-dws" cannot create resource "dwdirectiverules"' in created.json()["message"]

    # Not enabled (no slurm.conf): the next steps say how, and how to start the gateway.
    assert not result.enabled and not result.slurm_conf_changed
    steps = "\n".join(result.next_steps())
    assert (
        f"slurmlink slurm gateway --kubeconfig {kubeconfig} --socket {socket_path} "
        f"--slurm-conf {conf_dir / 'slurm.conf'}" in steps
    )
    assert "BurstBufferType=burst_buffer/lua" in steps and "restart slurmctld" in steps


def test_reinstall_changes_nothing_and_keeps_the_issued_key(server: ServerProcess, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    _install(conf_dir, server_state_dir=server.state_dir)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in conf_dir.iterdir()}

    logs: list[str] = []
    again = _install(conf_dir, logs, server_state_dir=server.state_dir)
    assert again.written == () and again.backups == () and not again.changed
    assert set(again.unchanged) == {conf_dir / n for n in (LUA_NAME, CONF_NAME, KUBECONFIG_NAME)}
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in conf_dir.iterdir()} == before
    assert any("still valid" in line for line in logs), logs

    # Without any source the installed kubeconfig is kept; a new socket path only rewrites the lua.
    moved = _install(conf_dir, socket_path=tmp_path / "other.sock")
    assert moved.written == (conf_dir / LUA_NAME,)
    assert (conf_dir / KUBECONFIG_NAME).read_bytes() == before[KUBECONFIG_NAME][0]


def test_issuing_for_another_namespace_replaces_our_own_kubeconfig_without_backup(
    server: ServerProcess, tmp_path: Path
) -> None:
    conf_dir = _conf_dir(tmp_path)
    _install(conf_dir, server_state_dir=server.state_dir)
    result = _install(conf_dir, server_state_dir=server.state_dir, namespace="default", user="wlm-2")
    assert result.written == (conf_dir / KUBECONFIG_NAME,)
    assert result.backups == ()  # we wrote the old one
    assert load_kubeconfig(conf_dir / KUBECONFIG_NAME).namespace == "default"


# ------------------------------------------------------------------------------ copied kubeconfig


def test_install_copies_a_kubeconfig(wlm_kubeconfig: Path, tmp_path: Path, server: ServerProcess) -> None:
    conf_dir = _conf_dir(tmp_path)
    result = _install(conf_dir, kubeconfig_source=wlm_kubeconfig)
    target = conf_dir / KUBECONFIG_NAME
    assert target in result.written
    assert target.read_bytes() == wlm_kubeconfig.read_bytes()
    assert _mode(target) == 0o600
    with server.client(target) as wlm:
        assert wlm.get(f"{GV}/namespaces/slurm/workflows").status_code == 200

    again = _install(conf_dir, kubeconfig_source=wlm_kubeconfig)
    assert again.written == ()
    # The installed file itself as the source: kept as is.
    assert _install(conf_dir, kubeconfig_source=target).written == ()


def test_a_foreign_kubeconfig_is_backed_up_privately(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    upstream = conf_dir / KUBECONFIG_NAME
    upstream.write_bytes(wlm_kubeconfig.read_bytes().replace(b"slurm-dws", b"upstream-dws"))
    upstream.chmod(0o600)
    old = upstream.read_bytes()
    result = _install(conf_dir, kubeconfig_source=wlm_kubeconfig)
    [backup] = result.backups
    assert backup.name.startswith(f"{KUBECONFIG_NAME}.bak-")
    assert backup.read_bytes() == old and _mode(backup) == 0o600


# ------------------------------------------------------------------------- foreign files, enable


def test_foreign_burst_buffer_files_are_kept_as_backups_once(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    (conf_dir / CONF_NAME).write_text("# the site's own\nDirective=DW\nStageInTimeout=7\n")
    (conf_dir / LUA_NAME).write_text("-- upstream's plugin shelling out to kubectl\n")
    logs: list[str] = []
    result = _install(conf_dir, logs, kubeconfig_source=wlm_kubeconfig)

    backups = {b.name.split(".bak-")[0]: b for b in result.backups}
    assert set(backups) == {CONF_NAME, LUA_NAME}
    assert backups[CONF_NAME].read_text() == "# the site's own\nDirective=DW\nStageInTimeout=7\n"
    assert backups[LUA_NAME].read_text() == "-- upstream's plugin shelling out to kubectl\n"
    assert (conf_dir / CONF_NAME).read_text() == burst_buffer_conf_text()
    assert any(str(backups[CONF_NAME]) in line and "did not write" in line for line in logs), logs

    # Our own files from now on: a changed socket rewrites the lua without another backup.
    result = _install(conf_dir, kubeconfig_source=wlm_kubeconfig, socket_path=tmp_path / "moved.sock")
    assert result.written == (conf_dir / LUA_NAME,) and result.backups == ()
    assert len(list(conf_dir.glob("*.bak-*"))) == 2


def test_enable_appends_burst_buffer_type_once(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    original = "ClusterName=test\n# BurstBufferType=burst_buffer/datawarp\nSlurmctldPort=6817"
    conf_dir = _conf_dir(tmp_path, original)
    slurm_conf = conf_dir / "slurm.conf"
    slurm_conf.chmod(0o640)
    result = _install(conf_dir, kubeconfig_source=wlm_kubeconfig, enable=True)
    assert result.enabled and result.slurm_conf_changed
    assert slurm_conf in result.written
    text = slurm_conf.read_text()
    assert text.startswith(original + "\n")
    assert text.count("BurstBufferType=burst_buffer/lua") == 1
    assert _mode(slurm_conf) == 0o640
    assert any("Restart slurmctld" in step for step in result.next_steps())

    again = _install(conf_dir, kubeconfig_source=wlm_kubeconfig, enable=True)
    assert again.enabled and not again.slurm_conf_changed and again.written == ()
    assert slurm_conf.read_text() == text
    assert not any("slurmctld" in step and "Restart" in step for step in again.next_steps())


def test_enable_leaves_another_burst_buffer_type_alone(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    original = "ClusterName=test\nburstbuffertype = burst_buffer/datawarp\n"
    conf_dir = _conf_dir(tmp_path, original)
    result = _install(conf_dir, kubeconfig_source=wlm_kubeconfig, enable=True)
    assert not result.enabled and not result.slurm_conf_changed
    assert (conf_dir / "slurm.conf").read_text() == original
    [note] = result.notes
    assert "BurstBufferType=burst_buffer/datawarp" in note and "by hand" in note


def test_enable_needs_slurm_conf(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    with pytest.raises(InstallError, match=r"slurm\.conf does not exist"):
        _install(conf_dir, kubeconfig_source=wlm_kubeconfig, enable=True)


def test_slurm_api_is_detected_or_falls_back_with_a_warning(
    wlm_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no slurmctld
    logs: list[str] = []
    result = _install(_conf_dir(tmp_path), logs, kubeconfig_source=wlm_kubeconfig, slurm_api=None)
    assert result.slurm_api == "22.05"
    assert any("warning" in line and "slurmctld -V" in line for line in logs), logs

    fake = tmp_path / "slurmctld"
    fake.write_text("#!/bin/sh\necho 'slurm 23.11.4'\n")
    fake.chmod(0o755)
    other = tmp_path / "other"
    other.mkdir()
    result = _install(_conf_dir(other), kubeconfig_source=wlm_kubeconfig, slurm_api=None)
    assert result.slurm_api == "23.11"
    assert 'local SLURM_API = "23.11"' in (result.conf_dir / LUA_NAME).read_text()


# ----------------------------------------------------------------------------------------- errors


def test_a_kubeconfig_source_is_required_at_first(tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    with pytest.raises(InstallError, match=r"pass --kubeconfig FILE .* or --server-state-dir DIR"):
        _install(conf_dir)
    assert list(conf_dir.iterdir()) == []  # nothing half-installed


def test_both_sources_are_rejected(server: ServerProcess, wlm_kubeconfig: Path, tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not both"):
        _install(_conf_dir(tmp_path), kubeconfig_source=wlm_kubeconfig, server_state_dir=server.state_dir)


def test_bad_kubeconfigs_are_rejected_with_the_reason(tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    garbage = tmp_path / "garbage.kubeconfig"
    garbage.write_text("clusters: [unclosed\n")
    with pytest.raises(InstallError, match=r"not usable: .*garbage\.kubeconfig: not valid YAML"):
        _install(conf_dir, kubeconfig_source=garbage)
    with pytest.raises(InstallError, match="does not exist"):
        _install(conf_dir, kubeconfig_source=tmp_path / "missing")

    anonymous = tmp_path / "anonymous.kubeconfig"
    anonymous.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    with pytest.raises(InstallError, match=r"has no credentials .*slurmlink kubeconfig"):
        _install(conf_dir, kubeconfig_source=anonymous)

    (tmp_path / "ca.crt").write_text("not used\n")
    relative = tmp_path / "relative.kubeconfig"
    config = yaml.safe_load(anonymous.read_text())
    config["clusters"][0]["cluster"]["certificate-authority"] = "ca.crt"
    config["users"][0]["user"]["token"] = "t0ken"
    relative.write_text(yaml.safe_dump(config))
    with pytest.raises(InstallError, match=r"relative path \(certificate-authority: ca\.crt\).*--flatten"):
        _install(conf_dir, kubeconfig_source=relative)
    assert list(conf_dir.iterdir()) == []


def test_a_state_dir_without_ca_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-server"
    empty.mkdir()
    with pytest.raises(InstallError, match=r"no CA in .*not-a-server/pki: start `slurmlink serve"):
        _install(_conf_dir(tmp_path), server_state_dir=empty)
    assert not (empty / "pki").exists()  # never creates a CA the server would not trust


def test_bad_arguments_are_rejected(wlm_kubeconfig: Path, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    with pytest.raises(InstallError, match="is not a directory"):
        _install(tmp_path / "nope", kubeconfig_source=wlm_kubeconfig)
    with pytest.raises(InstallError, match="must be absolute"):
        _install(conf_dir, kubeconfig_source=wlm_kubeconfig, socket_path=Path("rel.sock"))
    with pytest.raises(InstallError, match="longer than the 107 bytes"):
        _install(conf_dir, kubeconfig_source=wlm_kubeconfig, socket_path=Path("/" + "s" * 120))
    with pytest.raises(InstallError, match=r"22\.05 or 23\.02"):
        _install(conf_dir, kubeconfig_source=wlm_kubeconfig, slurm_api="latest")


# -------------------------------------------------------------------------------------------- CLI


def test_cli_install_happy_path(server: ServerProcess, tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path, "ClusterName=cli\n")
    socket_path = tmp_path / "cli.sock"
    args = ["--server-state-dir", str(server.state_dir), "--socket", str(socket_path), "--enable"]
    result = _cli(*args, env={"SLURMLINK_SLURM_CONF_DIR": str(conf_dir)})
    assert result.returncode == 0, result.stderr
    assert f"Installed slurmlink's burst buffer plugin in {conf_dir} (Slurm API 22.05)." in result.stdout
    for name in (LUA_NAME, CONF_NAME, KUBECONFIG_NAME, "slurm.conf"):
        assert f"wrote     {conf_dir / name}" in result.stdout
    assert "Next steps:" in result.stdout
    assert f"slurmlink slurm gateway --kubeconfig {conf_dir / KUBECONFIG_NAME} --socket {socket_path}" in (
        result.stdout
    )
    assert "Restart slurmctld" in result.stdout
    assert "BurstBufferType=burst_buffer/lua" in (conf_dir / "slurm.conf").read_text()
    assert f"[slurm install] wrote {conf_dir / LUA_NAME}" in result.stderr

    again = _cli("--conf-dir", str(conf_dir), *args)
    assert again.returncode == 0, again.stderr
    assert "Already installed:" in again.stdout and "wrote" not in again.stdout
    assert "Restart slurmctld" not in again.stdout


def test_cli_install_errors(tmp_path: Path) -> None:
    conf_dir = _conf_dir(tmp_path)
    result = _cli("--conf-dir", str(conf_dir), "--socket", str(tmp_path / "x.sock"), "--slurm-api", "22.05")
    assert result.returncode == 1
    assert "Error: no kubeconfig for the plugin" in result.stderr
    assert "--server-state-dir" in result.stderr

    missing = _cli("--kubeconfig", str(tmp_path / "k"), env={"SLURMLINK_SLURM_CONF_DIR": ""})
    assert missing.returncode == 2
    assert "Missing option '--conf-dir'" in missing.stderr
