"""pyproject.toml, constraints.txt and the installs by role agree with the code.

* the base install provides every third-party module the gateway, web, store, migrations and
  CLI import (lazy imports too), and no torch; each extra provides what its commands import;
* pyproject.toml holds ranges (Python 3.11 and newer), constraints.txt the exact versions, which
  satisfy those ranges; every install in the scripts and the Dockerfile goes through it.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cxr_triage.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OURS = {"cxr_triage", "governance", "worker", "dicom_gateway", "training", "web", "migrations"}
BASE_PACKAGES = ("cxr_triage", "governance", "dicom_gateway", "web", "migrations")
# Modules of the base packages that belong to a command needing an extra (cxr_triage.cli checks
# for it before importing them).
NEEDS_AN_EXTRA = {"cxr_triage/demo.py"}


def third_party_imports(paths: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in OURS and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    pending = list(extras)
    while pending:
        extra = pending.pop()
        for line in PROJECT["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == "cxr-triage":
                pending += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


def closure(reqs: list[Requirement]) -> set[str]:
    """The distributions ``reqs`` install here, dependencies of dependencies included."""
    seen: set[str] = set()
    pending = [(canonicalize_name(r.name), set(r.extras)) for r in reqs]
    while pending:
        name, extras = pending.pop()
        if name in seen and not extras:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                pending.append((canonicalize_name(req.name), set(req.extras)))
    return seen


@functools.cache
def module_owners() -> dict[str, set[str]]:
    """Import name -> the distributions that install it (one scan of site-packages)."""
    return {m: {canonicalize_name(d) for d in ds} for m, ds in packages_distributions().items()}


def providers(module: str) -> set[str]:
    return module_owners().get(module, set())


def test_the_base_install_provides_every_import_of_the_base_packages() -> None:
    paths = [
        p
        for package in BASE_PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if str(p.relative_to(ROOT)) not in NEEDS_AN_EXTRA
    ]
    imports = third_party_imports(paths)
    assert "torch" not in imports and "torchvision" not in imports
    base = closure(requirements())
    assert "torch" not in base and "torchvision" not in base
    missing = {m: where[:2] for m, where in imports.items() if not providers(m) & base}
    assert not missing, f"imported by base packages but not in the base install: {missing}"


@pytest.mark.train
@pytest.mark.parametrize(("extra", "packages"), [("worker", ("worker",)), ("train", ("training",))])
def test_each_extra_provides_what_its_commands_import(
    extra: str, packages: tuple[str, ...]
) -> None:
    paths = [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]
    installed = closure(requirements((extra,)))
    missing = {
        m: w[:2] for m, w in third_party_imports(paths).items() if not providers(m) & installed
    }
    assert not missing, f"the {extra!r} extra lacks {missing}"
    # What cxr_triage.extras checks for is what the extra installs.
    for module in EXTRAS[extra]:
        assert providers(module) & installed, module


def test_pyproject_holds_ranges_for_python_3_11_and_newer() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    linters = {"ruff", "mypy"}  # pinned on purpose: new rules must not turn main red
    for req in requirements(("all",)):
        if canonicalize_name(req.name) in linters:
            continue
        assert not any(spec.operator == "==" for spec in req.specifier), f"exact pin: {req}"
    worker = {canonicalize_name(r.name): r for r in requirements(("worker",))}
    assert "torch" in worker and "torchvision" in worker
    assert {"all", "dev", "test", "train", "worker"} <= set(PROJECT["optional-dependencies"])


def test_constraints_pin_versions_inside_the_ranges() -> None:
    pins = {
        canonicalize_name(name): version
        for name, version in re.findall(
            r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE
        )
    }
    assert "cxr-triage" not in pins
    for req in requirements(("all",)):
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (name, pins[name])


def test_every_install_goes_through_the_constraints() -> None:
    texts = {
        name: (ROOT / name).read_text()
        for name in ("scripts/setup", "scripts/test-base", "Dockerfile")
    }
    for name, text in texts.items():
        code = re.sub(r"^\s*#.*$", "", text, flags=re.MULTILINE)  # comments out
        joined = re.sub(r"\\\n\s*", " ", code)
        for line in re.findall(r"pip install [^\n]*", joined):
            if "--upgrade pip" in line or "--dry-run" in line:
                continue
            assert "-c constraints.txt" in line, f"{name}: {line}"


def test_readme_shows_the_three_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in (". ", "'.[worker]'", "'.[train]'"):
        assert f"pip install -c constraints.txt {spec}" in readme, spec
