"""The admin API of result exports: list and retry, admins only."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from governance import deliveries
from governance.db import Store
from governance.models import DeliveryKind, TriageEvent
from tests.results.triaged import triaged_study


def test_admin_lists_and_retries_a_parked_export(
    store: Store, admin: TestClient, radiologist: TestClient, synthetic_study_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    study = sorted(p for p in synthetic_study_dir.iterdir() if p.is_dir())[0]
    triaged = triaged_study(store, study, tmp_path / "spool")

    def park(session):  # type: ignore[no-untyped-def]
        event = session.get(TriageEvent, triaged.event_id)
        (delivery_id,) = deliveries.plan(
            session, event, [deliveries.Target("pacs", DeliveryKind.SR, 1)]
        )
        deliveries.claim(session, delivery_id)
        deliveries.record_failure(
            session, delivery_id, error="association rejected by PACS@h:104",
            transient=True, backoff_base_s=1, actor="pytest",
        )  # fmt: skip
        return delivery_id

    delivery_id = store.run(park)
    assert radiologist.get("/api/exports").status_code == 403
    listed = admin.get("/api/exports", params={"state": "failed"})
    assert listed.status_code == 200
    assert [(r["id"], r["last_error"]) for r in listed.json()] == [
        (delivery_id, "association rejected by PACS@h:104")
    ]
    assert admin.get("/api/exports", params={"state": "lost"}).status_code == 422
    retried = admin.post(f"/api/exports/{delivery_id}/retry")
    assert retried.status_code == 200 and retried.json()["state"] == "pending"
    assert admin.post(f"/api/exports/{delivery_id}/retry").status_code == 409
    assert admin.post("/api/exports/999999/retry").status_code == 404
