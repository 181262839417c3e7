"""Check docker-compose.yml without a Docker engine.

:func:`check_project` returns a list of problems (empty when the file is right), each one line
naming the service and what is wrong:

* the file, interpolated the way Compose does with ``.env.example`` (required secrets filled
  with a placeholder), validates against the Compose Specification's JSON schema (the copy that
  the ``check-jsonschema`` package vendors);
* every cxr-triage service runs a real ``cxr-triage`` subcommand with options its parser
  accepts, sets only known ``CXR_*`` settings, and is health-checked by a real
  ``cxr-healthcheck`` check of its own kind;
* every other long-running service has a health check, and every ``depends_on`` names a
  service with a condition that service can meet;
* ports and volumes agree with the settings: the gateway and web publish the ports they
  listen on, nothing publishes a host port twice, every named volume is declared and used,
  the spool and the model folder are volumes mounted at the same path wherever they are used,
  bind mounts exist in the repository;
* secrets come from the environment with no default (``${VAR:?...}``) and ``.env.example``
  lists every variable the file needs;
* least privilege: no cxr-triage service logs in to PostgreSQL as the superuser or as the
  schema owner that migrates; every one has the pseudonym and audit keys;
* the test PACS's Orthanc config points its "triage" modality at the gateway's AE title and
  port, is allowed to call the gateway, and loads the routing script that is mounted.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.compose_file import (
    ROOT,
    SECRET_WORDS,
    MissingVariable,
    as_dict,
    command_problem,
    compose_schema,
    effective_env,
    healthcheck_parser,
    interpolate,
    is_cxr_service,
    known_settings,
    load,
    mounts,
    one_shots,
    parse_args,
    parse_env_file,
    published,
    role,
    variable_uses,
    volume_at,
)


def check_schema(doc: Mapping[str, Any]) -> list[str]:
    """Problems the Compose Specification's JSON schema finds."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(
        compose_schema(), format_checker=jsonschema.FormatChecker()
    )
    return [
        f"schema: {'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def check_services(doc: Mapping[str, Any]) -> list[str]:
    """Commands, settings, health checks and dependencies of every service."""
    problems = []
    services = doc.get("services") or {}
    settings = known_settings()
    shots = one_shots(services)
    health_parser = healthcheck_parser()
    for name, service in services.items():
        env = as_dict(service.get("environment"))
        test = (service.get("healthcheck") or {}).get("test") or []
        disabled = (service.get("healthcheck") or {}).get("disable") or test[:1] == ["NONE"]
        if name in shots:
            if service.get("restart", "no") not in {"no", "on-failure"}:
                problems.append(f"{name}: a one-shot service must not restart unless it fails")
        elif not test or disabled:
            problems.append(f"{name}: no health check")
        for dep, spec in as_dict(service.get("depends_on")).items():
            condition = spec.get("condition") if isinstance(spec, dict) else None
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
            elif condition is None:
                problems.append(f"{name}: depends on {dep} without a condition")
            elif condition == "service_healthy" and not services[dep].get("healthcheck"):
                problems.append(f"{name}: waits for {dep} to be healthy, which has no check")
        if not is_cxr_service(service):
            problems += [
                f"{name}: sets {key} but runs no cxr-triage"
                for key in env
                if key.startswith("CXR_")
            ]
            continue
        command = service.get("command")
        if not isinstance(command, list):
            problems.append(f"{name}: command must be a list of arguments to cxr-triage")
            continue
        problem = command_problem([str(part) for part in command])
        if problem:
            problems.append(f"{name}: {problem}")
        problems += [
            f"{name}: {key} is not a cxr-triage setting"
            for key in env
            if key.startswith("CXR_") and key not in settings
        ]
        kind = str(command[0]) if command else ""
        kind = {"results-worker": "worker"}.get(kind, kind)  # a Celery worker: pinged alike
        if kind in {"gateway", "worker", "web", "beat"}:
            if test[:2] != ["CMD", "cxr-healthcheck"] or test[2:3] != [kind]:
                problems.append(f"{name}: health check must be `cxr-healthcheck {kind}`")
            elif problem := parse_args(health_parser, [str(part) for part in test[2:]]):
                problems.append(f"{name}: health check: {problem}")
    return problems


def check_ports(doc: Mapping[str, Any]) -> list[str]:
    """Published ports: well formed, not published twice, the ones the services listen on."""
    problems = []
    taken: dict[str, tuple[str, str]] = {}
    for name, service in (doc.get("services") or {}).items():
        env = as_dict(service.get("environment"))
        ports = published(service)
        for ip, host, container in ports:
            if not container.isdigit() or (host and not host.isdigit()):
                problems.append(f"{name}: port {ip}:{host}:{container} is not HOST:CONTAINER")
                continue
            if host in taken and (ip == taken[host][0] or "0.0.0.0" in {ip, taken[host][0]}):
                problems.append(f"{name}: host port {host} is published by {taken[host][1]} too")
            if host:
                taken[host] = (ip, name)
        wanted = {
            "gateway": ("CXR_DICOM_PORT", "CXR_DICOM_HOST"),
            "web": ("CXR_WEB_PORT", "CXR_WEB_HOST"),
        }.get(role(service) or "")
        if wanted:
            port_var, host_var = wanted
            if port_var not in env:
                problems.append(f"{name}: set {port_var} explicitly (the port it publishes)")
            elif str(env[port_var]) not in {container for _, _, container in ports}:
                problems.append(
                    f"{name}: listens on {port_var}={env[port_var]}, which it does not publish"
                )
            if env.get(host_var, "0.0.0.0") not in {"0.0.0.0", "::"}:
                problems.append(f"{name}: {host_var} must be 0.0.0.0 in a container")
    return problems


def check_volumes(doc: Mapping[str, Any], root: Path) -> list[str]:
    """Volumes declared and used, mounted at one path, holding the spool and the models."""
    problems = []
    services = doc.get("services") or {}
    declared = set(doc.get("volumes") or {})
    used: set[str] = set()
    targets: dict[str, set[str]] = {}
    for name, service in services.items():
        for source, target, _ in mounts(service):
            if source.startswith((".", "/", "~")):
                if source.startswith(".") and not (root / source).exists():
                    problems.append(f"{name}: bind mount {source} does not exist")
                continue
            used.add(source)
            targets.setdefault(source, set()).add(target)
            if source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes")
    problems += [f"volume {v!r} is declared but no service mounts it" for v in declared - used]
    problems += [
        f"volume {v!r} is mounted at different paths: {sorted(t)}"
        for v, t in targets.items()
        if len(t) > 1
    ]
    needs = {
        "gateway": [("CXR_SPOOL_DIR", True)],
        "worker": [("CXR_SPOOL_DIR", False), ("CXR_MODEL_DIR", False)],
    }
    holder: dict[str, dict[str, str]] = {}
    shared: dict[str, set[str]] = {}
    for name, service in services.items():
        env = as_dict(service.get("environment"))
        if role(service) is not None:
            for var in (
                "CXR_DATABASE_URL",
                "CXR_BROKER_URL",
                "CXR_QUEUE",
                "CXR_SPOOL_DIR",
                "CXR_MODEL_DIR",
            ):
                shared.setdefault(var, set()).add(str(env.get(var)))
        for var, writable in needs.get(role(service) or "", []):
            path = env.get(var)
            found = volume_at(service, str(path)) if path else None
            if found is None:
                problems.append(f"{name}: {var}={path} is not on a volume")
                continue
            if writable and found[1]:
                problems.append(f"{name}: {var} is mounted read-only")
            holder.setdefault(var, {})[name] = found[0]
    problems += [
        f"cxr-triage services disagree on {var}: {sorted(values)}"
        for var, values in shared.items()
        if len(values) > 1
    ]
    spool = holder.get("CXR_SPOOL_DIR", {})
    if len(set(spool.values())) > 1:
        problems.append(f"gateway and workers keep the spool on different volumes: {spool}")
    return problems


def check_privileges(doc: Mapping[str, Any]) -> list[str]:
    """Services log in as the application role; every one has the pseudonym and audit keys."""
    from sqlalchemy.engine import make_url

    problems = []
    services = doc.get("services") or {}
    postgres = as_dict((services.get("postgres") or {}).get("environment"))
    superuser = str(postgres.get("POSTGRES_USER", "postgres"))
    owners = set()
    for service in services.values():
        owner_url = as_dict(service.get("environment")).get("CXR_MIGRATION_DATABASE_URL")
        if owner_url:
            owners.add(make_url(str(owner_url)).username)
    for name, service in services.items():
        if role(service) is None:
            continue
        env = as_dict(service.get("environment"))
        url = env.get("CXR_DATABASE_URL")
        user = make_url(str(url)).username if url else None
        if user == superuser:
            problems.append(
                f"{name}: CXR_DATABASE_URL logs in as the PostgreSQL superuser {user!r}"
            )
        elif user in owners:
            problems.append(f"{name}: CXR_DATABASE_URL logs in as the schema owner {user!r}")
        for key in ("CXR_PSEUDONYM_KEY", "CXR_AUDIT_KEY"):
            if not env.get(key):
                problems.append(f"{name}: {key} is not set (each container would make its own)")
    return problems


def check_variables(text: str, env_example: Mapping[str, str]) -> list[str]:
    """Secrets required with no default, every needed variable in .env.example."""
    problems = []
    for name, op, _ in variable_uses(text):
        required = op in {":?", "?"}
        if any(word in name for word in SECRET_WORDS) and not required:
            problems.append(f"${{{name}}} is a secret: use ${{{name}:?...}}, with no default")
        if required and name not in env_example:
            problems.append(f"{name} is required but .env.example does not list it")
        if required and env_example.get(name):
            problems.append(f".env.example must not hold a value for the secret {name}")
        if not required and op is None and name not in env_example:
            problems.append(f"${{{name}}} has no default and .env.example does not list it")
    return problems


def lua_constant(script: str, name: str) -> str | None:
    """The string a ``local NAME = '...'`` line of the routing script assigns."""
    match = re.search(rf"^local {name} = '([^']*)'", script, re.MULTILINE)
    return match[1] if match else None


def check_orthanc(doc: Mapping[str, Any], root: Path) -> list[str]:
    """The test PACS's config routes to the gateway and loads the mounted routing script."""
    problems = []
    services = doc.get("services") or {}
    gateways = {
        name: as_dict(s.get("environment")) for name, s in services.items() if role(s) == "gateway"
    }
    for name, service in services.items():
        files = {target: source for source, target, _ in mounts(service)}
        configs = [t for t in files if t.startswith("/etc/orthanc/") and t.endswith(".json")]
        if not configs:
            continue
        env = {k: str(v) for k, v in as_dict(service.get("environment")).items()}
        # Orthanc substitutes ${VAR} from its own environment when it reads the file.
        config = json.loads(interpolate((root / files[configs[0]]).read_text(), env))
        container_ports = {container for _, _, container in published(service)}
        for key in ("HttpPort", "DicomPort"):
            if str(config.get(key)) not in container_ports:
                problems.append(f"{name}: {key} {config.get(key)} is not published")
        for script_path in config.get("LuaScripts", []):
            if script_path not in files or not (root / files[script_path]).is_file():
                problems.append(f"{name}: Lua script {script_path} is not mounted from the repo")
                continue
            script = (root / files[script_path]).read_text()
            target = lua_constant(script, "TARGET_MODALITY")
            mark = lua_constant(script, "FORWARDED_MARK")
            if mark not in config.get("UserMetadata", {}):
                problems.append(f"{name}: UserMetadata must declare {mark!r} for {script_path}")
            modality = config.get("DicomModalities", {}).get(target)
            if modality is None:
                problems.append(f"{name}: no modality {target!r}, which {script_path} sends to")
                continue
            ae_title, host, port = modality[:3]
            gateway = gateways.get(host)
            if gateway is None:
                problems.append(f"{name}: modality {target!r} host {host!r} is no gateway service")
                continue
            if str(port) != str(gateway.get("CXR_DICOM_PORT")):
                problems.append(
                    f"{name}: modality {target!r} port {port} is not the gateway's "
                    f"CXR_DICOM_PORT {gateway.get('CXR_DICOM_PORT')}"
                )
            if ae_title != gateway.get("CXR_AE_TITLE", "CXRTRIAGE"):
                problems.append(
                    f"{name}: modality {target!r} AE title {ae_title!r} is not the "
                    f"gateway's CXR_AE_TITLE {gateway.get('CXR_AE_TITLE')!r}"
                )
            allowed = [
                a.strip()
                for a in str(gateway.get("CXR_ALLOWED_CALLING_AES", "")).split(",")
                if a.strip()
            ]
            if allowed and config.get("DicomAet", "ORTHANC") not in allowed:
                problems.append(
                    f"{name}: its AE title {config.get('DicomAet')!r} is not in the "
                    f"gateway's CXR_ALLOWED_CALLING_AES {allowed}"
                )
    return problems


# The Dockerfile's runtime targets and which services run each: a slim image without torch for
# everything that never imports it (DESIGN.md), the worker image with PyTorch for the workers.
SLIM_ROLES = {"gateway", "web", "db", "beat", "model", "policy", "token", "audit", "results-worker"}
WORKER_ROLES = {"worker"}
TARGET_OF_ROLE = {**{r: "slim" for r in SLIM_ROLES}, **{r: "worker" for r in WORKER_ROLES}}


def dockerfile_stages(text: str) -> dict[str, str]:
    """Each named stage of a Dockerfile and its text (``FROM ... AS name`` to the next FROM)."""
    stages = {}
    for block in re.split(r"^(?=FROM )", text, flags=re.MULTILINE):
        match = re.match(r"FROM \S+ AS (\S+)", block)
        if match:
            stages[match.group(1)] = block
    return stages


def with_mounted_files(stage: str, root: Path) -> str:
    """A stage's text followed by the files of the build context its RUN lines bind-mount
    (``RUN --mount=type=bind,source=deploy/runtime-user.sh,...``), which it runs."""
    sources = re.findall(r"--mount=type=bind,source=([^,\s]+)", stage)
    return stage + "".join(
        (root / source).read_text() for source in sources if (root / source).is_file()
    )


def pip_installs(text: str) -> list[str]:
    """Each ``pip install`` command of a Dockerfile's RUN lines, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        command.strip()
        for line in re.findall(r"^RUN (.*)$", joined, re.MULTILINE)
        for command in re.split(r"&&|;", line)
        if "pip install" in command
    ]


def constraint_pins(root: Path) -> dict[str, str]:
    """``name -> version`` of constraints.txt (names lower-case)."""
    text = (root / "constraints.txt").read_text()
    return {
        name.lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", text, re.MULTILINE)
    }


def check_targets(doc: Mapping[str, Any], dockerfile: str, root: Path) -> list[str]:
    """Each cxr-triage service builds the target of its role; one image name per target."""
    problems = []
    stages = {
        name: with_mounted_files(stage, root)
        for name, stage in dockerfile_stages(dockerfile).items()
    }
    images: dict[str, tuple[str, str]] = {}
    for name, service in (doc.get("services") or {}).items():
        if not is_cxr_service(service):
            continue
        build = service.get("build")
        target = build.get("target") if isinstance(build, dict) else None
        kind = role(service)
        wanted = TARGET_OF_ROLE.get(kind or "")
        if target is None:
            problems.append(f"{name}: build must name a Dockerfile target (slim or worker)")
            continue
        if target not in stages:
            problems.append(f"{name}: build target {target!r} is not a stage of the Dockerfile")
        if wanted and target != wanted:
            problems.append(
                f"{name}: `cxr-triage {kind}` must run the {wanted!r} image, not {target!r}"
            )
        # A new named volume takes the owner of the folder it is mounted on from the image: one
        # the image does not create belongs to root, and the non-root services cannot write it.
        made = set(re.findall(r"/var/lib/cxr-triage/[\w-]+", stages.get(target, "")))
        for source, mounted_at, _ in mounts(service):
            if source.startswith((".", "/", "~")) or not mounted_at.startswith("/var/lib/"):
                continue
            if mounted_at not in made:
                problems.append(
                    f"{name}: volume {source!r} is mounted at {mounted_at}, which the {target} "
                    "image does not create for its user (a new volume would belong to root)"
                )
        image = str(service.get("image", ""))
        if image in images and images[image][0] != target:
            problems.append(
                f"{name}: image {image!r} is also built from target {images[image][0]!r} "
                f"by {images[image][1]}"
            )
        images.setdefault(image, (target, name))
    return problems


def check_dockerfile(text: str, root: Path) -> list[str]:
    """Multi-stage with a slim and a worker target, non-root, torch only in the worker image, by
    a build argument that names its variant, versions that match constraints.txt."""
    problems = []
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = constraint_pins(root)
    stages = dockerfile_stages(text)
    for target in ("slim", "worker"):
        if target not in stages:
            problems.append(f"Dockerfile: no {target!r} target (FROM ... AS {target})")
            continue
        users = re.findall(r"^USER (\S+)", stages[target], re.MULTILINE)
        if not users or users[-1].split(":")[0] in {"root", "0"}:
            problems.append(f"Dockerfile: the {target} target must run as a non-root USER")
    for source in re.findall(r"COPY --from=(\S+)", stages.get("slim", "")):
        for line in pip_installs(stages.get(source, "")):
            if re.search(r"\btorch|\[[^]]*\b(worker|train|all)\b|download\.pytorch\.org", line):
                problems.append(
                    f"Dockerfile: the slim image copies from {source}, which installs "
                    f"torch: {line!r}"
                )
    for line in pip_installs(text):
        if "-c constraints.txt" not in line:
            problems.append(f"Dockerfile: {line!r} installs without -c constraints.txt")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    if "TORCH_VARIANT" not in args or "download.pytorch.org/whl/${TORCH_VARIANT}" not in text:
        problems.append("Dockerfile: torch must come from the index that ARG TORCH_VARIANT names")
    for name, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        if args.get(arg) != pins.get(name):
            problems.append(
                f"Dockerfile: {arg}={args.get(arg)} but constraints.txt pins "
                f"{name}=={pins.get(name)}"
            )
    if args.get("VERSION") != project["version"]:
        problems.append(
            f"Dockerfile: VERSION={args.get('VERSION')} but the project is {project['version']}"
        )
    if 'org.opencontainers.image.version="${VERSION}"' not in text:
        problems.append("Dockerfile: no org.opencontainers.image.version label")
    if not re.search(
        r"^COPY .*deploy/healthcheck\.py /opt/venv/bin/cxr-healthcheck$", text, re.MULTILINE
    ):
        problems.append("Dockerfile: cxr-healthcheck (used by the compose health checks) missing")
    if 'ENTRYPOINT ["cxr-triage"]' not in text:
        problems.append(
            'Dockerfile: ENTRYPOINT must be ["cxr-triage"] (compose commands are its subcommands)'
        )
    for line in re.findall(r"^(?:COPY|ADD) .*$", text, re.MULTILINE):
        if re.search(r"\btests\b|\bruns\b|\.pt\b|\.dcm\b|\bvar\b|^(?:COPY|ADD) \. ", line):
            problems.append(f"Dockerfile: {line!r} would bake data, weights or tests in")
    return problems


def check_project(
    root: Path = ROOT,
    compose_text: str | None = None,
    env_example: str | None = None,
    dockerfile: str | None = None,
) -> list[str]:
    """Every problem of the compose file, .env.example and Dockerfile (given texts override)."""
    text = compose_text if compose_text is not None else (root / "docker-compose.yml").read_text()
    env_text = env_example if env_example is not None else (root / ".env.example").read_text()
    example = parse_env_file(env_text)
    problems = check_variables(text, example)
    try:
        doc = load(text, effective_env(text, example))
    except (MissingVariable, yaml.YAMLError) as exc:
        return [*problems, f"cannot load docker-compose.yml: {exc}"]
    problems += check_schema(doc)
    problems += check_services(doc)
    problems += check_ports(doc)
    problems += check_volumes(doc, root)
    problems += check_privileges(doc)
    problems += check_orthanc(doc, root)
    for ignore_file in (".dockerignore", ".gitignore"):
        path = root / ignore_file
        if not path.exists() or ".env" not in path.read_text().split():
            problems.append(f"{ignore_file} must list .env (it holds the passwords)")
    docker = dockerfile if dockerfile is not None else (root / "Dockerfile").read_text()
    problems += check_dockerfile(docker, root)
    problems += check_targets(doc, docker, root)
    return problems
