"""The base install (``pip install .``, no extras): gateway, web and migrations without torch.

These run in the base-install job of scripts/test (Python 3.13, ``CXR_TEST_BASE_INSTALL=1``), where
the installed ``cxr-triage`` is a plain (non-editable) ``pip install .`` of this tree. In the full
suite the torch checks skip: there the extras are installed on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.extras import BASE_INSTALL

CLI = Path(sys.executable).parent / "cxr-triage"
base_only = pytest.mark.skipif(not BASE_INSTALL, reason="the base-install job only")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    return subprocess.run(
        list(args),
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@base_only
def test_torch_is_not_installed(tmp_path: Path) -> None:
    result = run(sys.executable, "-c", "import torch", cwd=tmp_path)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'torch'" in result.stderr


@base_only
def test_the_package_is_the_installed_one_not_this_tree(tmp_path: Path) -> None:
    result = run(
        sys.executable, "-c", "import governance; print(governance.__file__)", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout, result.stdout


@pytest.mark.parametrize("command", ["gateway", "web", "db", "model", "up"])
def test_the_base_commands_answer_help(tmp_path: Path, command: str) -> None:
    result = run(str(CLI), command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cxr-triage {command}")


def test_db_upgrade_on_sqlite_then_the_gateway_and_web_import_without_torch(tmp_path: Path) -> None:
    env = {"CXR_DATABASE_URL": f"sqlite:///{tmp_path / 'store.sqlite'}"}
    result = run(str(CLI), "db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "store at revision" in result.stdout
    result = run(str(CLI), "db", "current", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    probe = (
        "import sys, dicom_gateway.main, dicom_gateway.scp, web.app, web.main, migrations;"
        "web.app.create_app;"
        "sys.exit(sorted(m for m in ('torch', 'torchvision') if m in sys.modules) != [])"
    )
    assert run(sys.executable, "-c", probe, cwd=tmp_path).returncode == 0


@base_only
@pytest.mark.parametrize(
    ("args", "extra"), [(["predict", "x.dcm"], "worker"), (["train", "--help"], "train")]
)
def test_a_command_that_needs_torch_names_the_extra(
    tmp_path: Path, args: list[str], extra: str
) -> None:
    result = run(str(CLI), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cxr-triage {args[0]}: needs the {extra!r} extra (torch is not installed): "
        f"pip install 'cxr-triage[{extra}]'"
    )
