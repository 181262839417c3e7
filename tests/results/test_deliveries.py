"""The books of result deliveries on both backends: claims, backoff, parking, a person's retry."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from governance import deliveries
from governance.db import Store
from governance.models import (
    AuditEvent,
    DeliveryKind,
    DeliveryState,
    ResultDelivery,
    TriageEvent,
)
from tests.results.triaged import triaged_study
from tests.services import settings_env


def test_claim_backoff_park_and_retry(store: Store, result_studies: list[Path], tmp_path: Path):
    triaged = triaged_study(store, result_studies[0], tmp_path / "spool")
    targets = [deliveries.Target("pacs", DeliveryKind.SR, 2)]

    def plan(session):  # type: ignore[no-untyped-def]
        return deliveries.plan(session, session.get(TriageEvent, triaged.event_id), targets)

    (delivery_id,) = store.run(plan)
    assert store.run(plan) == [delivery_id]
    with store.read() as session:
        assert deliveries.due(session) == [delivery_id]

    assert store.run(lambda s: deliveries.claim(s, delivery_id)) is not None
    assert store.run(lambda s: deliveries.claim(s, delivery_id)) is None  # one claim at a time
    state = store.run(
        lambda s: deliveries.record_failure(
            s, delivery_id, error="association aborted", transient=True,
            backoff_base_s=60, actor="pytest",
        )
    )  # fmt: skip
    assert state == DeliveryState.RETRYING
    with store.read() as session:
        assert deliveries.due(session) == []  # not before its backoff has passed
        row = deliveries.list_deliveries(session)[0]
        next_attempt_at, attempts = row.next_attempt_at, row.attempts
    assert next_attempt_at is not None and attempts == 1

    # Due again once the backoff has passed; the last attempt parks the row.
    later = next_attempt_at + dt.timedelta(seconds=1)
    with store.read() as session:
        assert deliveries.due(session, now=later) == [delivery_id]
    store.run(lambda s: s.execute(update(ResultDelivery).values(next_attempt_at=None)))
    assert store.run(lambda s: deliveries.claim(s, delivery_id)) is not None
    state = store.run(
        lambda s: deliveries.record_failure(
            s, delivery_id, error="association aborted", transient=True,
            backoff_base_s=60, actor="pytest",
        )
    )  # fmt: skip
    assert state == DeliveryState.FAILED
    with store.read() as session:
        assert deliveries.due(session) == []
        assert [r.id for r in deliveries.list_deliveries(session, state="failed")] == [delivery_id]

    row = store.run(lambda s: deliveries.retry(s, delivery_id, actor="pytest"))
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    with pytest.raises(ValueError, match="only failed or retrying"):
        store.run(lambda s: deliveries.retry(s, delivery_id, actor="pytest"))
    with store.read() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "delivery_retried" in actions and "instances_exported" in actions


def test_backoff_doubles_and_is_capped() -> None:
    assert [deliveries.backoff_s(n, 30) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert deliveries.backoff_s(30, 30) == 3600
    with pytest.raises(ValueError, match="attempts"):
        deliveries.backoff_s(0, 30)


def test_export_cli_lists_and_retries(make_settings, make_database_url, result_studies, tmp_path):
    url = make_database_url("sqlite")
    settings = make_settings(database_url=url)
    store = Store.from_url(url)
    triaged = triaged_study(store, result_studies[0], tmp_path / "spool")

    def park(session):  # type: ignore[no-untyped-def]
        event = session.get(TriageEvent, triaged.event_id)
        (delivery_id,) = deliveries.plan(
            session, event, [deliveries.Target("pacs", DeliveryKind.SR, 1)]
        )
        deliveries.claim(session, delivery_id)
        deliveries.record_failure(
            session, delivery_id, error="C-STORE status 0xa900", transient=False,
            backoff_base_s=1, actor="pytest",
        )  # fmt: skip
        return delivery_id

    delivery_id = store.run(park)
    env = settings_env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cxr_triage.cli", "export", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    listed = cli("list", "--state", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["id"], row["last_error"]) == (delivery_id, "C-STORE status 0xa900")
    retried = cli("retry", "--all-failed")
    assert retried.returncode == 0 and str(delivery_id) in retried.stdout
    assert "pending" in cli("list").stdout
    wrong = cli("retry", str(delivery_id))
    assert wrong.returncode == 2 and "only failed or retrying" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert cli("--help").returncode == 0
    store.dispose()


def test_nothing_leaves_for_a_shadow_decision() -> None:
    """Shadow mode (go-live sign-off): the flag is kept and audited, never exported or sent."""
    from results.config import parse
    from results.delivery import targets

    config = parse(
        {
            "dicom": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
            "webhook": {"ris": {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32}},
            "hl7": {"ris-hl7": {"host": "127.0.0.1", "port": 2575}},
        }
    )

    def event(*, shadow: bool) -> TriageEvent:
        return TriageEvent(
            study_id=1,
            study_instance_uid="1.2.3",
            status="triaged",
            probability=0.9,
            tau=0.5,
            flagged=True,
            previously_flagged=False,
            shadow=shadow,
        )

    live = {(t.destination, t.kind) for t in targets(config, event(shadow=False), 3)}
    assert live == {("pacs", "sr"), ("ris", "webhook"), ("ris-hl7", "hl7")}
    assert targets(config, event(shadow=True), 3) == []
