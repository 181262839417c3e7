"""The package boundaries of DESIGN.md, checked on every import statement (lazy ones too).

| package | may import (besides itself and cxr_triage.settings) |
| governance | nothing else of ours |
| worker | governance |
| dicom_gateway | governance, worker.celery_app (never torch) |
| training | worker (preprocess, model, inference), governance |
| web | governance, worker.celery_app |
| migrations | governance (models; and the engine and errors it reports with) |
| results | governance, worker.celery_app, dicom_gateway.scu (never torch) |
| cxr_triage | anything (the CLI dispatches lazily) |

Every package may also import ``cxr_triage.settings`` and the package root (its version), which
import nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {
    "cxr_triage",
    "governance",
    "worker",
    "dicom_gateway",
    "training",
    "web",
    "migrations",
    "results",
}
ALLOWED: dict[str, tuple[str, ...]] = {
    "governance": (),
    "worker": ("governance",),
    "dicom_gateway": ("governance", "worker.celery_app"),
    "training": ("governance", "worker.preprocess", "worker.model", "worker.inference"),
    "web": ("governance", "worker.celery_app"),
    "migrations": ("governance",),
    "results": ("governance", "worker.celery_app", "dicom_gateway.scu"),
}
NEVER_TORCH = ("dicom_gateway", "web", "governance", "migrations", "results")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
            found.append((node.lineno, node.module))
    return found


def allowed(package: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in OURS or top == package or module.startswith("cxr_triage.settings"):
        return True
    if module in {"cxr_triage", "cxr_triage.__version__"}:  # the package root imports nothing
        return True
    return any(module == rule or module.startswith(rule + ".") for rule in ALLOWED[package])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_stay_within_design(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top not in OURS:
                continue
            # `from worker.celery_app import make_celery` yields both the module and the name;
            # judge the module path only.
            if not allowed(package, module) and not allowed(package, module.rsplit(".", 1)[0]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", NEVER_TORCH)
def test_servers_without_models_never_import_torch(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in {"torch", "torchvision"}
    ]
    assert not bad, bad


def test_the_running_gateway_loads_neither_torch_nor_scipy() -> None:
    """What the gateway process actually loads, transitively: torch and scipy (about 70 MB of
    resident memory for the statistics that only beat and the web run) stay out of it."""
    import subprocess
    import sys

    code = (
        "import sys, dicom_gateway.scp, dicom_gateway.handlers, dicom_gateway.assembly;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'sklearn'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    assert loaded == "[]", loaded


def test_the_rule_catches_a_forbidden_import() -> None:
    assert not allowed("dicom_gateway", "worker.tasks")
    assert not allowed("governance", "worker.celery_app")
    assert not allowed("web", "training.train")
    assert allowed("dicom_gateway", "worker.celery_app")
    assert allowed("results", "dicom_gateway.scu")
    assert not allowed("results", "worker.inference")
    assert not allowed("results", "dicom_gateway.scp")


def test_synthetic_data_imports_neither_torch_nor_the_training_pipeline() -> None:
    # `cxr-triage synth` runs on the base install: torch-free modules only.
    torch_free = ("training.synthetic", "worker.preprocess", "cxr_triage.settings")
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "training" / "synthetic").rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in {"torch", "torchvision"}
        or (module.split(".")[0] in OURS and not module.startswith(torch_free))
    ]
    assert not bad, bad
