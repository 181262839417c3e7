"""Reading docker-compose.yml as Compose does, and the facts about cxr-triage the checks use.

Interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``), YAML anchors and
merge keys, short-syntax ports and volumes, the Compose Specification's JSON schema (the copy
``check-jsonschema`` vendors), the ``cxr-triage`` subcommands and their parsers, the ``CXR_*``
settings and the ``cxr-healthcheck`` parser. :mod:`tests.deploy.compose_check` holds the checks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.resources
import importlib.util
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_SECRET = "0123456789abcdef"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by ``check-jsonschema``."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())  # type: ignore[no-any-return]


def variable_uses(text: str) -> list[tuple[str, str | None, str]]:
    """Each ``${NAME[op arg]}`` in ``text``: ``(name, op, arg)``; ``$$`` is not a variable."""
    return [(m["name"], m["op"], m["arg"]) for m in _VARIABLE.finditer(text) if m["name"]]


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables as Compose does (``${X}``, ``${X:-d}``, ``${X-d}``, ``${X:?e}``)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name is None:
            return "$"
        value = env.get(name)
        if op in {":-", ":?"} and not value:
            value = None
        if value is None and op in {":?", "?"}:
            raise MissingVariable(f"{name} is required: {arg}")
        if value is None:
            return arg if op in {":-", "-"} else ""
        return value

    return _VARIABLE.sub(substitute, text)


def parse_env_file(text: str) -> dict[str, str]:
    """``NAME=value`` lines of a .env file (comments and blank lines skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def effective_env(text: str, env_example: Mapping[str, str]) -> dict[str, str]:
    """``.env.example`` with every required variable given a placeholder value."""
    env = dict(env_example)
    for name, op, _ in variable_uses(text):
        if op in {":?", "?"} and not env.get(name):
            env[name] = PLACEHOLDER_SECRET
    return env


def load(text: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Interpolate, then parse (YAML anchors and merge keys resolved)."""
    return yaml.safe_load(interpolate(text, env))  # type: ignore[no-any-return]


def as_dict(value: Any) -> dict[str, Any]:
    """An ``environment``/``depends_on`` given as a mapping or a list, as a mapping."""
    if isinstance(value, dict):
        return value
    result: dict[str, Any] = {}
    for item in value or []:
        name, _, rest = str(item).partition("=")
        result[name] = rest if "=" in str(item) else {"condition": "service_started"}
    return result


def known_settings() -> set[str]:
    """Every ``CXR_*`` variable a cxr-triage process reads."""
    import inspect

    import cxr_triage.cli
    from cxr_triage.settings import Settings

    names = {f"CXR_{name.upper()}" for name in Settings.model_fields}
    # Read straight from the environment by the command itself, before any settings.
    names |= set(re.findall(r"CXR_[A-Z_]+", inspect.getsource(cxr_triage.cli)))
    return names


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None when ``parser`` accepts ``argv``; else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(exc)
    return None


def command_problem(command: list[str]) -> str | None:
    """None when ``cxr-triage COMMAND...`` is a real subcommand with options it accepts."""
    from cxr_triage.cli import COMMANDS

    if not command or command[0] not in COMMANDS:
        return f"`cxr-triage {' '.join(command)}` is not a cxr-triage subcommand"
    module = importlib.import_module(COMMANDS[command[0]][0])
    if hasattr(module, "get_args_parser"):
        return parse_args(module.get_args_parser(), command[1:])
    return None


def healthcheck_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()  # type: ignore[no-any-return]


def is_cxr_service(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in {".", "./"}


def one_shots(services: Mapping[str, Any]) -> set[str]:
    """Services others wait for with ``service_completed_successfully``."""
    return {
        name
        for service in services.values()
        for name, dep in as_dict(service.get("depends_on")).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """``(source, target, read_only)`` of each short-syntax volume."""
    result = []
    for volume in service.get("volumes", []):
        parts = str(volume).split(":")
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        result.append((parts[0], parts[1] if len(parts) > 1 else parts[0], read_only))
    return result


def volume_at(service: Mapping[str, Any], path: str) -> tuple[str, bool] | None:
    """The mount (source, read-only) holding ``path`` in the container, if any."""
    best = None
    for source, target, read_only in mounts(service):
        if (path == target or path.startswith(target.rstrip("/") + "/")) and (
            best is None or len(target) > len(best[2])
        ):
            best = (source, read_only, target)
    return None if best is None else (best[0], best[1])


def published(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(host_ip, host_port, container_port)`` of each short-syntax port."""
    result = []
    for port in service.get("ports", []):
        parts = str(port).split("/")[0].rsplit(":", 2)
        if len(parts) == 1:
            result.append(("", "", parts[0]))
        elif len(parts) == 2:
            result.append(("0.0.0.0", parts[0], parts[1]))
        else:
            result.append((parts[0], parts[1], parts[2]))
    return result


def role(service: Mapping[str, Any]) -> str | None:
    """The cxr-triage subcommand a service runs (None for other images)."""
    command = service.get("command")
    if is_cxr_service(service) and isinstance(command, list) and command:
        return str(command[0])
    return None
