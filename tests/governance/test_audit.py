"""Recording audit events: DICOM event codes, no patient identifiers, export only after commit."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from governance import audit
from governance.db import Store
from governance.models import AuditEvent

STUDY = "1.2.826.0.1.3680043.10.999.1"


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (audit.Action.INSTANCES_RECEIVED, "110104"),
        (audit.Action.INSTANCES_EXPORTED, "110104"),
        (audit.Action.STUDY_VIEWED, "110103"),
        (audit.Action.USER_AUTHENTICATED, "110114"),
        (audit.Action.QUERY, "110112"),
        (audit.Action.AUDIT_LOG_USED, "110101"),
        (audit.Action.ASSOCIATION_REFUSED, "110113"),
        (audit.Action.TOKEN_REFUSED, "110113"),
        (audit.Action.APPLICATION_START, "110100"),
        (audit.Action.POLICY_SET, "110100"),
        (audit.Action.MODEL_ROLLED_BACK, "110100"),
        (audit.Action.STUDY_TRIAGED, None),
        (audit.Action.STUDY_OVERRIDDEN, None),
    ],
)
def test_events_carry_their_dicom_code(action: str, code: str | None) -> None:
    assert audit.EVENT_CODES.get(action) == code
    if code:
        assert code in audit.CODE_MEANINGS


def test_record_fills_code_and_chains(store: Store) -> None:
    first = store.run(lambda s: audit.record(s, actor="cli:ann", action=audit.Action.QUERY))
    second = store.run(
        lambda s: audit.record_audit_use(
            s, actor="cli:ann", operation="query", detail={"returned": 3}
        )
    )
    assert (first.id, second.id) == (1, 2)
    assert second.prev_hash == first.row_hash
    assert second.event_code == "110101" and second.object_type == "audit_trail"
    assert second.detail == {"operation": "query", "returned": 3}


@pytest.mark.parametrize("key", ["patient_id", "PatientName", "accession_number", "BirthDate"])
def test_patient_identifiers_are_refused_in_detail(store: Store, key: str) -> None:
    def work(session: Any) -> None:
        audit.record(session, actor="gw", action=audit.Action.INSTANCES_RECEIVED, detail={key: "x"})

    with pytest.raises(ValueError, match="patient identifiers") as caught:
        store.run(work)
    assert "x" not in str(caught.value).replace(key, "")  # names the key, never the value
    with store.read() as session:
        assert session.scalar(select(AuditEvent)) is None


def test_pseudonym_is_keyed_and_stable() -> None:
    key = b"k" * 32
    one = audit.pseudonym("PAT-0042", key)
    assert one == audit.pseudonym(" PAT-0042 ", key) and len(one) == 64
    assert one != audit.pseudonym("PAT-0042", b"j" * 32)
    assert "0042" not in one
    with pytest.raises(ValueError, match="key"):
        audit.pseudonym("PAT-0042", b"short")
    assert not audit.is_phi_key("patient_pseudonym")


def test_sink_gets_events_after_commit_only(store: Store) -> None:
    received: list[dict[str, Any]] = []
    previous = audit.set_export_sink(received.append)
    try:

        def rolled_back(session: Any) -> None:
            audit.record(session, actor="a", action=audit.Action.QUERY, object_uid="1.2")
            assert received == []  # not before the commit
            raise RuntimeError("the audited action failed")

        with pytest.raises(RuntimeError):
            store.run(rolled_back)
        assert received == []
        event = store.run(
            lambda s: audit.record(
                s,
                actor="a",
                action=audit.Action.STUDY_VIEWED,
                object_type="study",
                object_uid=STUDY,
            )
        )
        assert [r["id"] for r in received] == [event.id]
        assert received[0]["row_hash"] == event.row_hash
        assert received[0]["event_code"] == "110103"
    finally:
        audit.set_export_sink(previous)


def test_a_failing_sink_does_not_fail_the_action(store: Store) -> None:
    def broken(_fields: dict[str, Any]) -> None:
        raise OSError("receiver gone")

    previous = audit.set_export_sink(broken)
    try:
        store.run(lambda s: audit.record(s, actor="a", action=audit.Action.QUERY))
    finally:
        audit.set_export_sink(previous)
    with store.read() as session:
        assert session.scalar(select(AuditEvent.actor)) == "a"
