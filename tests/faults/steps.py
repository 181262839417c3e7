"""Steps the fault tests share: studies to send, services to start and wait for."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cxr_triage.settings import Settings
from governance.models import Study, StudyStatus
from tests.faults.conftest import FaultStack
from tests.peers import echoscu
from tests.services import Service, wait_until
from training.synthetic.studies import write_studies


def make_studies(
    folder: Path, n: int, seed: int, size: int = 256
) -> tuple[list[Path], dict[Path, tuple[str, str]]]:
    """``n`` one-image studies; the files and their (SOP, study) UIDs."""
    records = write_studies(folder, n, size=size, seed=seed, lateral=False)
    uids = {Path(str(r.path)): (r.sop_instance_uid, r.study_instance_uid) for r in records}
    return list(uids), uids


def gateway_answers(settings: Settings) -> bool:
    return echoscu("127.0.0.1", settings.dicom_port, calling_ae="ORTHANC").returncode == 0


def wait_gateway(settings: Settings, gateway: Service) -> None:
    wait_until(lambda: gateway_answers(settings), 60, "the gateway to answer C-ECHO", [gateway])


def wait_worker_ready(worker: Service, previous_readies: int = 0) -> None:
    wait_until(
        lambda: worker.text().count(" ready.") > previous_readies,
        120,
        "the worker to be ready",
        [worker],
    )


def start_gateway_and_worker(
    settings: Settings, start_service: Callable[[str, Settings], Service]
) -> tuple[Service, Service]:
    gateway = start_service("gateway", settings)
    worker = start_service("worker", settings)
    wait_gateway(settings, gateway)
    wait_worker_ready(worker)
    return gateway, worker


def status_count(stack: FaultStack, status: str = StudyStatus.TRIAGED) -> int:
    with stack.store.read() as session:
        query = select(func.count()).select_from(Study).where(Study.status == status)
        return int(session.scalar(query) or 0)


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)
