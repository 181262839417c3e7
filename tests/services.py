"""Fixtures for tests that run cxr-triage services as real processes, and a trained model.

A pytest plugin (listed in tests/conftest.py), so the session-scoped demo model is trained once
for the whole run, whichever folders use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import ModelVersion
from governance.policies import set_policy
from governance.registry import activate_model, get_model, register_model
from tests.extras import needs_extra


@dataclass(frozen=True)
class TrainedModel:
    """A demo model trained once per test session, with what it needs to be registered again."""

    path: Path
    input_size: int
    temperature: float
    tau: float
    details: dict[str, Any]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Train the NON-CLINICAL demo model once (a minute or two on the CPU) in a scratch store."""
    needs_extra("train")
    from migrations import upgrade
    from training.demo import ensure_demo_model

    base = tmp_path_factory.mktemp("demo-model")
    settings = Settings(_env_file=None, data_dir=base)  # type: ignore[call-arg]
    upgrade(settings.database_url)
    store = Store.from_url(settings.database_url)
    version = ensure_demo_model(settings, store, progress=False)
    with store.read() as session:
        model = get_model(session, version)
        policy = model.policies[-1]
        trained = TrainedModel(
            Path(model.path), model.input_size, model.temperature, policy.tau, dict(model.details)
        )
    store.dispose()
    return trained


def activate_trained(
    store: Store, trained: TrainedModel, version: str = "demo-e2e"
) -> ModelVersion:
    """Register the session's trained model in ``store`` with its balanced policy, and activate."""

    def work(session):  # type: ignore[no-untyped-def]
        model = register_model(
            session,
            version=version,
            path=trained.path,
            input_size=trained.input_size,
            temperature=trained.temperature,
            details=trained.details,
            actor="pytest",
        )
        set_policy(
            session,
            model,
            operating_point="balanced",
            tau=trained.tau,
            rationale="demo policy for the end-to-end test",
            approved_by="pytest",
        )
        return activate_model(session, version, actor="pytest")

    return store.run(work)


@dataclass(frozen=True)
class Stack:
    """What a test needs to drive the production-shaped stack it starts."""

    settings: Settings
    store: Store
    model: ModelVersion
    token: str


@pytest.fixture
def production_stack(
    make_settings: Callable[..., Settings],
    make_database_url: Callable[[str], str],
    trained_model: TrainedModel,
) -> Iterator[Stack]:
    """Settings on PostgreSQL and Redis accepting the AE ``ORTHANC``, the trained model active,
    and a radiologist's token. Start the services with ``start_service``."""
    from governance.models import Role
    from governance.tokens import create_token
    from tests.conftest import REDIS_URL

    settings = make_settings(
        database_url=make_database_url("postgresql"),
        broker_url=REDIS_URL,
        allowed_calling_aes=["ORTHANC"],
        precision="fp32",
    )
    store = Store.from_url(settings.database_url)
    model = activate_trained(store, trained_model)
    _, token = store.run(
        lambda s: create_token(s, name="radiologist", role=Role.RADIOLOGIST, created_by="pytest")
    )
    yield Stack(settings, store, model, token)
    store.dispose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a cxr-triage process use exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    values = {
        "CXR_DATA_DIR": str(settings.data_dir),
        "CXR_DATABASE_URL": settings.database_url,
        "CXR_BROKER_URL": settings.broker_url,
        "CXR_QUEUE": settings.queue,
        "CXR_SPOOL_DIR": str(settings.spool_path),
        "CXR_MODEL_DIR": str(settings.model_path),
        "CXR_AE_TITLE": settings.ae_title,
        "CXR_DICOM_HOST": settings.dicom_host,
        "CXR_DICOM_PORT": str(settings.dicom_port),
        "CXR_ALLOWED_CALLING_AES": ",".join(settings.allowed_calling_aes),
        "CXR_STABLE_AGE_S": str(settings.stable_age_s),
        "CXR_REQUEUE_AFTER_S": str(settings.requeue_after_s),
        "CXR_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "CXR_RECONCILE_MAX_ATTEMPTS": str(settings.reconcile_max_attempts),
        "CXR_SPOOL_RETENTION_H": str(settings.spool_retention_h),
        "CXR_SPOOL_PRUNE_INTERVAL_S": str(settings.spool_prune_interval_s),
        "CXR_SPOOL_MIN_FREE_GB": str(settings.spool_min_free_gb),
        "CXR_SPOOL_MAX_GB": str(settings.spool_max_gb),
        "CXR_NETWORK_TIMEOUT_S": str(settings.network_timeout_s),
        "CXR_WEB_HOST": settings.web_host,
        "CXR_WEB_PORT": str(settings.web_port),
        "CXR_DEVICE": settings.device,
        "CXR_PRECISION": settings.precision,
        "CXR_BATCH_SIZE": str(settings.batch_size),
        "CXR_WORKER_STUDIES": str(settings.worker_studies),
        "CXR_BATCH_WAIT_MS": str(settings.batch_wait_ms),
        "CXR_BACKLOG_LANES": str(settings.backlog_lanes).lower(),
        "CXR_DRIFT_INTERVAL_S": str(settings.drift_interval_s),
        "CXR_DRIFT_WINDOW_STUDIES": str(settings.drift_window_studies),
        "CXR_DRIFT_BASELINE_STUDIES": str(settings.drift_baseline_studies),
        "CXR_RECALIBRATION_LABELS": str(settings.recalibration_labels),
    }
    if settings.heatmaps:
        values["CXR_HEATMAPS"] = "true"
    if settings.worklist_phi:
        values["CXR_WORKLIST_PHI"] = "true"
    if settings.viewer_url_template:
        values["CXR_VIEWER_URL_TEMPLATE"] = settings.viewer_url_template
    if settings.results_config is not None:
        values["CXR_RESULTS_CONFIG"] = str(settings.results_config)
        values["CXR_RESULTS_QUEUE"] = settings.results_queue
        values["CXR_RESULT_BACKOFF_S"] = str(settings.result_backoff_s)
        values["CXR_RESULT_SWEEP_S"] = str(settings.result_sweep_s)
        values["CXR_RESULT_MAX_ATTEMPTS"] = str(settings.result_max_attempts)
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[str, Settings], Service]]:
    """Start ``cxr-triage NAME`` as a real process; its output goes to a log file."""
    services: list[Service] = []

    def start(name: str, settings: Settings) -> Service:
        log = tmp_path / f"{name}.log"
        restarts = 1
        while log.exists():  # a restarted service keeps its predecessor's log
            restarts += 1
            log = tmp_path / f"{name}-{restarts}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "--log-level", "INFO", name],
            env=settings_env(settings),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        service = Service(name, proc, log)
        services.append(service)
        return service

    yield start
    for service in services:
        if service.proc.poll() is None:
            service.proc.terminate()
    for service in services:
        try:
            service.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait()


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, services: list[Service] | None = None
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with the services' logs.

    A connection error (OSError) counts as "not yet": the service may still be starting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        for service in services or []:
            if service.proc.poll() is not None:
                pytest.fail(
                    f"{service.name} exited ({service.proc.returncode}) while waiting for "
                    f"{what}:\n{service.text()[-3000:]}"
                )
        time.sleep(0.2)
    logs = "\n".join(f"--- {s.name}\n{s.text()[-2000:]}" for s in services or [])
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
