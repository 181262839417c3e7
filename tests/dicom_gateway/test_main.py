"""``cxr-triage gateway`` as a person runs it: a real process configured by CXR_* variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import free_port
from tests.peers import echoscu

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update({"CXR_DATA_DIR": str(tmp_path / "data"), "CXR_DICOM_HOST": "127.0.0.1"})
    env.update({f"CXR_{k.upper()}": v for k, v in values.items()})
    return env


def _run(tmp_path: Path, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "gateway", *args],
        env=_env(tmp_path, **values),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "gateway", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "usage: cxr-triage gateway" in result.stdout
    assert "CXR_ALLOWED_CALLING_AES" in result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "schema revision none, this code needs"),
        ({"database_url": "mysql://db/cxr"}, "supports sqlite and postgresql"),
        ({"spool_dir": "/proc/version/spool"}, "CXR_SPOOL_DIR /proc/version/spool cannot be used"),
    ],
)
def test_a_wrong_setting_ends_in_one_clear_line(
    tmp_path: Path, make_database_url: Callable[[str], str], values: dict[str, str], message: str
) -> None:
    if "spool_dir" in values:
        values = {**values, "database_url": make_database_url("sqlite")}

    result = _run(tmp_path, dicom_port=str(free_port()), **values)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cxr-triage gateway: ")
    assert message in lines[-1]
    assert "Traceback" not in result.stderr


def test_runs_from_settings_and_stops_cleanly_on_sigterm(
    tmp_path: Path, make_database_url: Callable[[str], str]
) -> None:
    # A password in the URL (ignored by the trust-auth test server) must not be printed.
    url = make_url(make_database_url("postgresql")).set(password="s3cret-pw")
    port = free_port()
    env = _env(
        tmp_path,
        database_url=url.render_as_string(hide_password=False),
        dicom_port=str(port),
        ae_title="GWTEST",
        allowed_calling_aes="ECHOSCU,PACS",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage.cli", "gateway"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("cxr-triage gateway: AE GWTEST on 127.0.0.1:"), banner
        assert f":{port}," in banner
        assert "s3cret-pw" not in banner
        assert echoscu("127.0.0.1", port, called_ae="GWTEST").returncode == 0

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "s3cret-pw" not in stderr
    assert "DICOM gateway GWTEST stopped" in stderr


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys, dicom_gateway.main, dicom_gateway.scp, dicom_gateway.handlers;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
