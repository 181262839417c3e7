"""A running worker picks up a model activation without a restart.

A real ``cxr-triage worker`` process consumes from Redis; a study it triages is scored by v1;
an admin activates v2 through the API; the next study is scored by v2 (its version and
checksum recorded), by the same worker process, which was never restarted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import ModelVersion, Study, StudyInference
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from governance.studies import ReceivedInstance, record_instance
from tests.conftest import REDIS_URL
from tests.web.conftest import bearer, make_tokens
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.worker]

INPUT_SIZE = 32
PHI = ("Doe^Jane", "PID-123456")  # what tests.worker.builders writes into every file


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two TorchScript ResNet-50s at 32 px that score differently (v2: another fc bias)."""
    import torch

    from worker.model import build_model, export_torchscript
    from worker.preprocess import PREPROCESSING_FILE

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    first = export_torchscript(build_model(), INPUT_SIZE, folder / "v1.pt")
    # v2: the same network, shifted; it carries v1's preprocessing record, as the worker needs.
    extra = {PREPROCESSING_FILE: ""}
    module = torch.jit.load(str(first), _extra_files=extra)
    with torch.no_grad():
        module.fc.bias += 0.5  # type: ignore[operator]
    second = folder / "v2.pt"
    torch.jit.save(module, str(second), _extra_files=extra)
    return first, second


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(settings.data_dir),
        CXR_DATABASE_URL=settings.database_url,
        CXR_BROKER_URL=settings.broker_url,
        CXR_QUEUE=settings.queue,
        CXR_DEVICE="cpu",
        CXR_PRECISION="fp32",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[Settings], tuple[Any, Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / "worker.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_triage.cli", "--log-level", "INFO", "worker"],
            env=_env(settings), stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _receive(store: Store, tmp_path: Path, seed: int) -> str:
    from tests.worker.builders import radiograph, write

    uid = generate_uid()
    ds = radiograph(study_uid=uid, view="PA", seed=seed)
    path = write(ds, tmp_path / "spool" / f"{ds.SOPInstanceUID}.dcm")
    item = ReceivedInstance(
        study_instance_uid=uid, series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=str(path),
        size_bytes=path.stat().st_size, calling_ae="TESTSCU", modality="CR", view_position="PA",
        body_part="CHEST",
    )  # fmt: skip
    store.run(lambda s: record_instance(s, item))
    return uid


def _result(store: Store, uid: str) -> tuple[str, str] | None:
    with store.read() as session:
        row = session.execute(
            select(ModelVersion.version, StudyInference.model_sha256)
            .join(StudyInference, StudyInference.model_version_id == ModelVersion.id)
            .join(Study, Study.result_id == StudyInference.id)
            .where(Study.study_instance_uid == uid)
        ).first()
    return (row[0], row[1]) if row else None


def _wait(what: str, predicate: Callable[[], Any], proc: Any, log: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the worker exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_a_running_worker_picks_up_an_activation(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_database_url: Callable[[str], str],
    two_models: tuple[Path, Path],
    worker_process: Callable[[Settings], tuple[Any, Path]],
) -> None:
    from worker.celery_app import make_celery, queue_study

    settings = make_settings(
        database_url=make_database_url("postgresql"), broker_url=REDIS_URL, precision="fp32"
    )
    store = Store.from_url(settings.database_url)
    v1, v2 = two_models

    def register(session):  # type: ignore[no-untyped-def]
        shas = {}
        for version, path in (("v1", v1), ("v2", v2)):
            model = register_model(
                session, version=version, path=path, input_size=INPUT_SIZE, actor="pytest"
            )
            set_policy(session, model, operating_point="balanced", tau=0.5,
                       rationale="pickup test", approved_by="pytest")  # fmt: skip
            shas[version] = model.sha256
        activate_model(session, "v1", actor="pytest")
        return shas

    shas = store.run(register)
    assert shas["v1"] != shas["v2"]
    admin = make_tokens(store)["admin"]
    proc, log = worker_process(settings)
    app = make_celery(settings)
    try:
        first = _receive(store, tmp_path, seed=1)
        queue_study(app, first)
        result = _wait("v1's result", lambda: _result(store, first), proc, log, 120)
        assert result == ("v1", shas["v1"])

        with TestClient(create_app(settings, store)) as client:
            response = client.post("/api/models/v2/activate", headers=bearer(admin))
        assert response.status_code == 200 and response.json()["active_version"] == "v2"
        activated = time.monotonic()

        second = _receive(store, tmp_path, seed=2)
        queue_study(app, second)
        result = _wait("v2's result", lambda: _result(store, second), proc, log, 120)
        picked_up = time.monotonic() - activated
        assert result == ("v2", shas["v2"])
        assert proc.poll() is None  # the same process, never restarted
        text = log.read_text()
        assert "loaded model v1" in text and "loaded model v2" in text
        leaked = [value for value in PHI if value in text]
        assert not leaked, f"the worker logged patient identifiers: {leaked}"
        print(f"\nactivation of v2 -> next study scored by v2 in {picked_up:.2f} s")
    finally:
        app.close()
        store.dispose()
