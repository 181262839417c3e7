"""docker-compose.yml, .env.example and the Dockerfile, checked without a Docker engine.

The real files must pass every check; a copy broken in one way must fail with a message that
names what is wrong, so a check that silently stopped working fails here too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.compose_check import check_project
from tests.deploy.compose_file import (
    ROOT,
    MissingVariable,
    compose_schema,
    interpolate,
    load,
    parse_env_file,
)

COMPOSE = (ROOT / "docker-compose.yml").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with the single occurrence of ``old`` replaced (fails if not exactly one)."""
    assert text.count(old) == 1, f"expected exactly one {old!r} in the file"
    return text.replace(old, new)


def add_service(block: str) -> Callable[[str], str]:
    """A mutation that adds a service (YAML indented by 2) at the end of ``services``."""
    return lambda text: replace_once(text, "\nvolumes:\n", "\n" + block + "\nvolumes:\n")


def test_the_repository_files_pass_every_check() -> None:
    assert check_project() == []


def test_the_schema_is_the_compose_specification() -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]


def test_the_stack_has_the_services_and_profiles_the_issue_asks_for() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    env.update(
        {
            "POSTGRES_PASSWORD": "p",
            "POSTGRES_OWNER_PASSWORD": "po",
            "POSTGRES_APP_PASSWORD": "pa",
            "REDIS_PASSWORD": "r",
            "ORTHANC_PASSWORD": "o",
            "CXR_PSEUDONYM_KEY": "k" * 32,
            "CXR_AUDIT_KEY": "a" * 32,
        }
    )
    doc = load(COMPOSE, env)
    services = doc["services"]
    assert {
        "orthanc",
        "redis",
        "postgres",
        "migrate",
        "gateway",
        "worker",
        "worker-cpu",
        "web",
    } <= set(services)
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    # The results worker: its own profile, the slim image, the spool and heatmaps read-only, the
    # workers' heatmaps on a volume they share, and a destinations file that exists.
    results = services["results-worker"]
    assert results["profiles"] == ["results"]
    assert results["command"][0] == "results-worker"
    assert results["environment"]["CXR_RESULTS_CONFIG"] == "/etc/cxr-triage/results.toml"
    assert "spool:/var/lib/cxr-triage/spool:ro" in results["volumes"]
    assert "heatmaps:/var/lib/cxr-triage/heatmaps:ro" in results["volumes"]
    assert "heatmaps:/var/lib/cxr-triage/heatmaps" in services["worker"]["volumes"]
    config_file = results["volumes"][0].split(":")[0]
    from results import config as results_config

    pacs = results_config.load(ROOT / config_file).dicom[0]
    assert (pacs.host, pacs.port, pacs.ae_title) == ("orthanc", 4242, "ORTHANC")
    assert services["orthanc"]["profiles"] == ["orthanc"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    # A slim image (no torch) for gateway, web and migrate; PyTorch only in the workers' image.
    for name in ("migrate", "gateway", "web", "results-worker"):
        assert services[name]["build"]["target"] == "slim"
    for name in ("worker", "worker-cpu"):
        assert services[name]["build"]["target"] == "worker"
        assert services[name]["image"] != services["gateway"]["image"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    # The broker and store URLs carry the passwords from the environment; the services log in
    # as the application role, the migrations as the owner, neither as the superuser.
    assert services["web"]["environment"]["CXR_BROKER_URL"] == "redis://:r@redis:6379/0"
    web_url = services["web"]["environment"]["CXR_DATABASE_URL"]
    assert web_url == "postgresql+psycopg://cxr_app:pa@postgres:5432/cxr"
    owner_url = services["migrate"]["environment"]["CXR_MIGRATION_DATABASE_URL"]
    assert owner_url == "postgresql+psycopg://cxr_owner:po@postgres:5432/cxr"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "postgres"
    for name in ("gateway", "worker", "web", "migrate"):
        environment = services[name]["environment"]
        assert environment["CXR_PSEUDONYM_KEY"] == "k" * 32, name
        assert environment["CXR_AUDIT_KEY"] == "a" * 32, name


def test_interpolation_follows_compose() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET} ${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME", env) == (
        "value value d  d $HOME"
    )
    with pytest.raises(MissingVariable, match="EMPTY is required: say so"):
        interpolate("${EMPTY:?say so}", env)
    assert interpolate("${EMPTY?say so}", env) == ""


def test_passwords_and_keys_are_required_before_compose_starts() -> None:
    with pytest.raises(MissingVariable, match="POSTGRES_"):
        load(COMPOSE, parse_env_file(ENV_EXAMPLE))
    full = {
        "POSTGRES_PASSWORD": "p",
        "POSTGRES_OWNER_PASSWORD": "po",
        "POSTGRES_APP_PASSWORD": "pa",
        "REDIS_PASSWORD": "r",
        "ORTHANC_PASSWORD": "o",
        "CXR_PSEUDONYM_KEY": "k" * 32,
        "CXR_AUDIT_KEY": "a" * 32,
    }
    load(COMPOSE, full)
    for key in ("CXR_PSEUDONYM_KEY", "CXR_AUDIT_KEY", "POSTGRES_APP_PASSWORD"):
        # Compose refuses to start without it (a recreated gateway would start new pseudonyms).
        with pytest.raises(MissingVariable, match=key):
            load(COMPOSE, {**full, key: ""})


BROKEN_COMPOSE = {
    "unknown command": (
        lambda t: replace_once(t, 'command: ["web"]', 'command: ["webserver"]'),
        "web: `cxr-triage webserver` is not a cxr-triage subcommand",
    ),
    "new service with an invented command": (
        add_service(
            '  scheduler:\n    <<: *cxr-service\n    command: ["scheduler"]\n'
            '    healthcheck:\n      test: ["CMD", "true"]\n'
        ),
        "scheduler: `cxr-triage scheduler` is not a cxr-triage subcommand",
    ),
    "option the subcommand does not have": (
        lambda t: replace_once(t, '["worker", "--name", "gpu0@%h"]', '["worker", "--gpus", "2"]'),
        "worker: cxr-triage worker: error: unrecognized arguments: --gpus 2",
    ),
    "unknown CXR_ variable in one service": (
        lambda t: replace_once(
            t,
            '      CXR_DICOM_PORT: "11112"\n',
            '      CXR_DICOM_PORT: "11112"\n      CXR_DICOM_PROT: "1"\n',
        ),
        "gateway: CXR_DICOM_PROT is not a cxr-triage setting",
    ),
    "unknown CXR_ variable in the shared settings": (
        lambda t: replace_once(t, "  CXR_QUEUE: cxr-triage\n", "  CXR_QUEUES: cxr-triage\n"),
        "web: CXR_QUEUES is not a cxr-triage setting",
    ),
    "health check of the wrong kind": (
        lambda t: replace_once(
            t, '["CMD", "cxr-healthcheck", "web"]', '["CMD", "cxr-healthcheck", "worker"]'
        ),
        "web: health check must be `cxr-healthcheck web`",
    ),
    "service without a health check": (
        add_service('  extra:\n    image: busybox\n    command: ["sleep", "1000"]\n'),
        "extra: no health check",
    ),
    "web listens on a port it does not publish": (
        lambda t: replace_once(t, 'CXR_WEB_PORT: "8000"', 'CXR_WEB_PORT: "8080"'),
        "web: listens on CXR_WEB_PORT=8080, which it does not publish",
    ),
    "one host port published twice": (
        lambda t: replace_once(
            t, '"${ORTHANC_DICOM_PORT:-4242}:4242"', '"${DICOM_PORT:-11112}:4242"'
        ),
        "orthanc: host port 11112 is published by gateway too",
    ),
    "volume not declared": (
        lambda t: replace_once(t, "\n  spool:\n", "\n"),
        "gateway: volume 'spool' is not declared under volumes",
    ),
    "gateway cannot write its spool": (
        lambda t: replace_once(
            t,
            "      - spool:/var/lib/cxr-triage/spool\n    depends_on: *depends-on-store",
            "      - spool:/var/lib/cxr-triage/spool:ro\n    depends_on: *depends-on-store",
        ),
        "gateway: CXR_SPOOL_DIR is mounted read-only",
    ),
    "workers without the spool": (
        lambda t: replace_once(
            t, "    - spool:/var/lib/cxr-triage/spool\n    - models:", "    - models:"
        ),
        "worker: CXR_SPOOL_DIR=/var/lib/cxr-triage/spool is not on a volume",
    ),
    "secret with a default": (
        lambda t: t.replace(
            "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}", "${REDIS_PASSWORD:-redis}"
        ),
        "${REDIS_PASSWORD} is a secret",
    ),
    "depends on a service that does not exist": (
        lambda t: replace_once(
            t,
            "  migrate: { condition: service_completed_successfully }",
            "  migrations: { condition: service_completed_successfully }",
        ),
        "gateway: depends on unknown service 'migrations'",
    ),
    "key the Compose schema does not know": (
        lambda t: replace_once(t, "stop_grace_period: 30s", "stop_grace_perod: 30s"),
        "schema: services/gateway",
    ),
    "services log in as the superuser": (
        lambda t: replace_once(
            t,
            "CXR_DATABASE_URL: postgresql+psycopg://cxr_app:",
            "CXR_DATABASE_URL: postgresql+psycopg://postgres:",
        ),
        "web: CXR_DATABASE_URL logs in as the PostgreSQL superuser 'postgres'",
    ),
    "services log in as the schema owner": (
        lambda t: replace_once(
            t,
            "CXR_DATABASE_URL: postgresql+psycopg://cxr_app:",
            "CXR_DATABASE_URL: postgresql+psycopg://cxr_owner:",
        ),
        "web: CXR_DATABASE_URL logs in as the schema owner 'cxr_owner'",
    ),
    "pseudonym key left to each container": (
        lambda t: "\n".join(line for line in t.splitlines() if "CXR_PSEUDONYM_KEY:" not in line),
        "gateway: CXR_PSEUDONYM_KEY is not set",
    ),
    "the worker built from the slim target": (
        lambda t: replace_once(t, "    target: worker\n", "    target: slim\n"),
        "worker: `cxr-triage worker` must run the 'worker' image, not 'slim'",
    ),
    "the gateway on the worker image": (
        lambda t: replace_once(
            t,
            '    command: ["gateway"]\n',
            '    command: ["gateway"]\n    build: { context: ., target: worker }\n',
        ),
        "gateway: `cxr-triage gateway` must run the 'slim' image, not 'worker'",
    ),
    "a target the Dockerfile lacks": (
        lambda t: replace_once(t, "    target: slim\n", "    target: runtime\n"),
        "build target 'runtime' is not a stage of the Dockerfile",
    ),
    "one image name for both targets": (
        lambda t: replace_once(
            t,
            "${TRIAGE_WORKER_IMAGE:-cxr-triage-worker:0.1.0}",
            "${TRIAGE_IMAGE:-cxr-triage:0.1.0}",
        ),
        "is also built from target",
    ),
    "a volume on a folder the image does not make": (
        lambda t: replace_once(
            t,
            "      - results:/var/lib/cxr-triage/results\n",
            "      - results:/var/lib/cxr-triage/out\n",
        ),
        "results-worker: volume 'results' is mounted at /var/lib/cxr-triage/out, which the slim",
    ),
    "Orthanc routes to another AE title": (
        lambda t: replace_once(
            t, "TRIAGE_AE_TITLE: ${CXR_AE_TITLE:-CXRTRIAGE}", "TRIAGE_AE_TITLE: OTHER"
        ),
        "orthanc: modality 'triage' AE title 'OTHER' is not the gateway's CXR_AE_TITLE",
    ),
}


@pytest.mark.parametrize("case", BROKEN_COMPOSE)
def test_a_broken_compose_file_is_caught(case: str) -> None:
    mutate, expected = BROKEN_COMPOSE[case]
    problems = check_project(compose_text=mutate(COMPOSE))
    assert any(expected in problem for problem in problems), problems


BROKEN_ENV_EXAMPLE = {
    "a required variable missing": (
        lambda t: replace_once(t, "REDIS_PASSWORD=\n", ""),
        "REDIS_PASSWORD is required but .env.example does not list it",
    ),
    "a password filled in": (
        lambda t: replace_once(t, "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=hunter2\n"),
        ".env.example must not hold a value for the secret POSTGRES_PASSWORD",
    ),
    "the test PACS not allowed to call": (
        lambda t: replace_once(
            t, "CXR_ALLOWED_CALLING_AES=ORTHANC", "CXR_ALLOWED_CALLING_AES=PACS"
        ),
        "orthanc: its AE title 'ORTHANC' is not in the gateway's CXR_ALLOWED_CALLING_AES",
    ),
}


@pytest.mark.parametrize("case", BROKEN_ENV_EXAMPLE)
def test_a_broken_env_example_is_caught(case: str) -> None:
    mutate, expected = BROKEN_ENV_EXAMPLE[case]
    problems = check_project(env_example=mutate(ENV_EXAMPLE))
    assert any(expected in problem for problem in problems), problems


BROKEN_DOCKERFILE = {
    "the worker runs as root": (
        lambda t: t[::-1].replace("USER cxr:cxr"[::-1], "USER root"[::-1], 1)[::-1],
        "the worker target must run as a non-root USER",
    ),
    "the slim image runs as root": (
        lambda t: t.replace("USER cxr:cxr", "USER 0", 1),
        "the slim target must run as a non-root USER",
    ),
    "no slim target": (
        lambda t: t.replace(" AS slim\n", " AS small\n"),
        "Dockerfile: no 'slim' target",
    ),
    "torch in the slim image": (
        lambda t: replace_once(
            t,
            "RUN pip install -c constraints.txt . \\",
            'RUN pip install -c constraints.txt ".[worker]" \\',
        ),
        "the slim image copies from slim-build, which installs torch",
    ),
    "an install without the constraints": (
        lambda t: replace_once(
            t,
            'pip install -c constraints.txt ".[${WORKER_EXTRAS}]"',
            'pip install ".[${WORKER_EXTRAS}]"',
        ),
        "installs without -c constraints.txt",
    ),
    "torch variant hard-coded": (
        lambda t: replace_once(t, "whl/${TORCH_VARIANT}", "whl/cpu"),
        "ARG TORCH_VARIANT",
    ),
    "version label out of date": (
        lambda t: t.replace("ARG VERSION=0.1.0", "ARG VERSION=0.0.9"),
        "VERSION=0.0.9 but the project is",
    ),
    "torch pin out of date": (
        lambda t: replace_once(t, "ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.13.0"),
        "TORCH_VERSION=2.13.0 but constraints.txt pins torch==2.14.1",
    ),
    "weights baked in": (
        lambda t: t.replace(
            "COPY migrations ./migrations",
            "COPY migrations ./migrations\nCOPY runs/model.pt ./model.pt",
        ),
        "would bake data, weights or tests in",
    ),
}


@pytest.mark.parametrize("case", BROKEN_DOCKERFILE)
def test_a_broken_dockerfile_is_caught(case: str) -> None:
    mutate, expected = BROKEN_DOCKERFILE[case]
    problems = check_project(dockerfile=mutate(DOCKERFILE))
    assert any(expected in problem for problem in problems), problems


def copy_project(tmp_path: Path) -> Path:
    for name in (
        "docker-compose.yml",
        ".env.example",
        "Dockerfile",
        "pyproject.toml",
        "constraints.txt",
        ".dockerignore",
        ".gitignore",
    ):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_orthanc_config_out_of_step_with_the_script_and_gateway_is_caught(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    assert check_project(root) == []
    config_path = root / "deploy" / "orthanc" / "orthanc.json"
    config = json.loads(config_path.read_text())
    config["UserMetadata"] = {}
    config["DicomModalities"]["triage"][2] = 104
    config_path.write_text(json.dumps(config))
    problems = check_project(root)
    assert any("UserMetadata must declare 'CxrTriageForwarded'" in p for p in problems), problems
    assert any("port 104 is not the gateway's CXR_DICOM_PORT 11112" in p for p in problems)
    (root / "deploy" / "orthanc" / "autoroute.lua").unlink()
    assert any(
        "Lua script /etc/orthanc/autoroute.lua is not mounted" in p for p in check_project(root)
    )


def test_a_volume_folder_the_runtime_images_do_not_create_is_caught(tmp_path: Path) -> None:
    # Both runtime images create their user's data folders with deploy/runtime-user.sh.
    root = copy_project(tmp_path)
    script = root / "deploy" / "runtime-user.sh"
    script.write_text(script.read_text().replace(" /var/lib/cxr-triage/heatmaps", ""))
    problems = check_project(root)
    assert any(
        "mounted at /var/lib/cxr-triage/heatmaps, which the slim image does not create" in p
        for p in problems
    ), problems


def test_env_file_stays_out_of_git_and_the_image(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    ignore = root / ".dockerignore"
    ignore.write_text(ignore.read_text().replace(".env\n", ""))
    assert ".dockerignore must list .env (it holds the passwords)" in check_project(root)


def test_readme_shows_compose_after_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    compose = readme.index("docker compose up")
    assert readme.index("scripts/demo") < compose
    assert readme.index("scripts/test") < compose
    assert readme.index("## The two commands") < readme.index("## Full stack with Docker")


def test_compose_file_is_plain_yaml_with_anchors() -> None:
    # Compose resolves anchors and merge keys; so must our loader, or the checks see too little.
    raw = yaml.safe_load(COMPOSE)
    assert raw["services"]["web"]["restart"] == "unless-stopped"
    assert raw["services"]["migrate"]["restart"] == "no"
