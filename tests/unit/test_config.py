"""Server configuration precedence: defaults < TOML file < environment/flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurmlink import config


def test_defaults(tmp_path: Path) -> None:
    cfg = config.build({}, {"state_dir": tmp_path})
    assert cfg.listen == "127.0.0.1:8443"
    assert cfg.store_url == f"sqlite:///{tmp_path / 'slurmlink.db'}"
    assert cfg.url == "https://127.0.0.1:8443"
    assert cfg.admin_kubeconfig == tmp_path / "admin.kubeconfig"
    assert cfg.namespaces == ["default", "dws-system", "slurm"]


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[serve]\nlisten = "0.0.0.0:9443"\nstore = "postgresql://u@db/x"\ntest_driver = false\n')
    values = config.load_file(path)
    cfg = config.build(values, {"listen": None, "store": "sqlite:////tmp/x.db"})
    assert cfg.listen == "0.0.0.0:9443" and cfg.client_host == "127.0.0.1"
    assert cfg.store_url == "sqlite:////tmp/x.db"
    assert cfg.test_driver is False


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[serve]\nlisen = 'x'\n")
    with pytest.raises(ValueError, match="unknown settings in \\[serve\\]: lisen"):
        config.load_file(path)


def test_serve_reports_a_bad_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[serve]\nbogus = 1\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "serve",
            "--config",
            str(path),
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unknown settings in [serve]: bogus" in result.stderr


def test_extra_listen_addresses_and_the_heartbeat_timeout(tmp_path: Path) -> None:
    cfg = config.build(
        {"extra_listen": ["10.213.7.1:8443", "[fd00::1]:9443"], "node_heartbeat_timeout": 5},
        {"state_dir": tmp_path, "hosts": ["ctl1"]},
    )
    assert cfg.extra_hosts == ["10.213.7.1", "fd00::1"]
    assert cfg.url == "https://127.0.0.1:8443"  # clients are told --listen's address
    assert cfg.node_heartbeat_timeout == 5
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        config.build({}, {"state_dir": tmp_path, "extra_listen": ["10.213.7.1"]})
    with pytest.raises(ValueError, match="node_heartbeat_timeout must be positive"):
        config.build({"node_heartbeat_timeout": 0}, {"state_dir": tmp_path})
