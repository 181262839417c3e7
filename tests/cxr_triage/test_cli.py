"""The `cxr-triage` command: --help everywhere, and one clear line (no traceback) for mistakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_triage.cli import COMMANDS, GROUPS, NEEDS_EXTRA, main
from cxr_triage.extras import extra_providing, missing_modules


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_help_lists_each_command_under_one_heading() -> None:
    listed = [name for names in GROUPS.values() for name in names]
    assert sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if name in NEEDS_EXTRA and missing_modules(NEEDS_EXTRA[name]):
        pytest.skip(f"needs the {NEEDS_EXTRA[name]!r} extra (the base-install job checks the line)")
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cxr-triage {name}")
    assert len(out.splitlines()) > 3  # a description, not just a usage line


def test_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cxr-triage: unknown command 'frobnicate'; run `cxr-triage --help`"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["db", "upgrade"], {"CXR_DATABASE_URL": "nonsense"}, "is not a database URL"),
        (
            ["db", "upgrade"],
            {"CXR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
            "cannot migrate the store",
        ),
        (["gateway"], {"CXR_DICOM_PORT": "eleven"}, "CXR_DICOM_PORT"),
        (["gateway"], {"CXR_AE_TITLE": "A" * 20}, "CXR_AE_TITLE"),
        (["web"], {"CXR_DEVICE": "tpu"}, "CXR_DEVICE"),
        pytest.param(
            ["predict", "/no/such/file.dcm"], {}, "/no/such/file.dcm", marks=pytest.mark.worker
        ),
        (["model", "show", "v404"], {}, "no model version 'v404'"),
        pytest.param(["worker"], {}, "cxr-triage db upgrade", marks=pytest.mark.worker),
    ],
)
def test_mistakes_end_in_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    env = {"CXR_DATA_DIR": str(tmp_path / "data"), **env}
    if args[0] == "model":
        assert run_cli("db", "upgrade", env=env).returncode == 0
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cxr-triage {args[0]}: ") and expected in last


# What a slim install (no torch) answers for each command that needs an extra. Blocking an
# import with None in sys.modules is Python's own way to make it fail; the base-install job of
# scripts/test also runs these where torch is really missing.
BLOCKED = ("torch", "torchvision", "sklearn", "matplotlib")
BLOCK = f"import sys\nfor m in {BLOCKED!r}: sys.modules[m] = None\n"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["predict", "x.dcm"], "worker"),
        (["worker", "--help"], "worker"),
        (["train", "--help"], "train"),
        (["evaluate", "--help"], "train"),
        (["demo"], "train"),
        (["up"], "worker"),
    ],
)
def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(
    tmp_path: Path, args: list[str], extra: str
) -> None:
    code = BLOCK + f"from cxr_triage.cli import main\nsys.exit(main({args!r}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env["CXR_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"cxr-triage {args[0]}: needs the {extra!r} extra "
        f"({'torch'} is not installed): pip install 'cxr-triage[{extra}]'"
    )
    assert not (tmp_path / "data").exists()  # refused before it touched anything


def test_a_missing_module_names_the_smallest_extra_that_installs_it() -> None:
    assert extra_providing("torch.nn") == "worker"
    assert extra_providing("PIL.Image") == "worker"
    assert extra_providing("sklearn.metrics") == "train"
    assert extra_providing("numpy") is None  # base: a broken install, not a missing extra
