"""``cxr-triage study list|retry`` against a real store (both backends) and a real Redis."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from cxr_triage.cli import main
from cxr_triage.settings import get_settings
from governance.audit import Action
from governance.db import Store
from governance.models import HMAC_SCHEME, AuditEvent, Study, StudyStatus
from governance.studies import ReceivedInstance, record_instance
from tests.conftest import REDIS_URL
from tests.dicom_gateway.inspection import RedisQueue


def add_study(store: Store, uid: str, status: str, detail: str | None = None) -> None:
    item = ReceivedInstance(
        study_instance_uid=uid,
        series_instance_uid=None,
        sop_instance_uid=f"{uid}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/spool/{uid}/{uid}.1.dcm",
        size_bytes=10,
        calling_ae="PACS",
    )

    def work(session):  # type: ignore[no-untyped-def]
        record_instance(session, item)
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        study.status = status
        study.status_detail = detail
        study.reconcile_attempts = 3

    store.run(work)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., Result]]:
    """Run ``cxr-triage ARGS`` in this process with exactly the given CXR_* environment."""

    def run(*args: str, env: dict[str, str]) -> Result:
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("CXR_")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            get_settings.cache_clear()
            capsys.readouterr()
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
            out = capsys.readouterr()
        get_settings.cache_clear()
        return Result(code, out.out, out.err)

    yield run
    get_settings.cache_clear()


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "CXR_DATABASE_URL": database_url,
        "CXR_DATA_DIR": str(tmp_path),
        "CXR_BROKER_URL": REDIS_URL,
        "CXR_QUEUE": f"cxr-test-{uuid.uuid4().hex[:8]}",
    }


def test_list_shows_failed_studies_and_retry_queues_them_once_audited(
    store: Store, env: dict[str, str], run_cli: Callable[..., Result]
) -> None:
    add_study(store, "1.2.9.1", StudyStatus.FAILED, "active model file missing")
    add_study(store, "1.2.9.2", StudyStatus.TRIAGED)
    add_study(store, "1.2.9.3", StudyStatus.FAILED, "triage failed; see the worker log")

    listed = run_cli("study", "list", "--status", "failed", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["study_instance_uid"] for r in rows) == ["1.2.9.1", "1.2.9.3"]
    assert {r["status"] for r in rows} == {"failed"}
    table = run_cli("study", "list", env=env)
    assert table.returncode == 0 and "1.2.9.2" in table.stdout and "model file" in table.stdout

    queue = RedisQueue(REDIS_URL, env["CXR_QUEUE"])
    try:
        retried = run_cli("study", "retry", "--failed", env=env)
        assert retried.returncode == 0, retried.stderr
        assert "queued 2 studies" in retried.stdout
        assert sorted(queue.wait_for(2)) == ["1.2.9.1", "1.2.9.3"]
    finally:
        queue.delete()
    with store.read() as session:
        studies = {s.study_instance_uid: s for s in session.scalars(select(Study))}
        assert studies["1.2.9.1"].status == StudyStatus.QUEUED
        assert studies["1.2.9.1"].reconcile_attempts == 0
        assert studies["1.2.9.2"].status == StudyStatus.TRIAGED
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == Action.STUDIES_REQUEUED)
        )
        assert event.actor.startswith("cli:") and event.detail["count"] == 2
        assert event.hash_scheme == HMAC_SCHEME  # keyed like every service's events
        assert event.detail["previous_status"] == {"failed": 2}
    again = run_cli("study", "retry", "--failed", env=env)
    assert again.returncode == 0 and "no failed studies" in again.stdout


def test_retry_by_uid_and_the_mistakes_a_person_makes(
    store: Store, env: dict[str, str], run_cli: Callable[..., Result]
) -> None:
    add_study(store, "1.2.9.5", StudyStatus.FAILED)
    unknown = run_cli("study", "retry", "1.2.9.5", "9.9.9", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "cxr-triage study: no study 9.9.9 in the store (1 unknown)"
    both = run_cli("study", "retry", "1.2.9.5", "--failed", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = run_cli("study", "retry", env=env)
    assert neither.returncode == 2
    bad_status = run_cli("study", "list", "--status", "lost", env=env)
    assert bad_status.returncode == 2 and "invalid choice" in bad_status.stderr

    # The broker does not answer: the study stays marked queued (the gateway's sweep sends it
    # later), and the person is told in one line.
    down = dict(env, CXR_BROKER_URL="redis://127.0.0.1:1/0")
    failed = run_cli("study", "retry", "1.2.9.5", env=down)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "0 of 1 sent" in failed.stderr
    with store.read() as session:
        assert session.scalar(select(Study.status)) == StudyStatus.QUEUED


def test_a_wrong_database_url_is_one_line(tmp_path: Path, run_cli: Callable[..., Result]) -> None:
    result = run_cli(
        "study", "list", env={"CXR_DATABASE_URL": "nonsense", "CXR_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
