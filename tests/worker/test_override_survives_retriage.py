"""A person's priority override stands: re-triage (a new instance, a new model version) changes
the model's result and flag, never the priority a radiologist set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from governance import actions
from governance.db import Store
from governance.models import AuditEvent, ModelVersion, Study
from governance.worklist import worklist, worklist_entry
from tests.worker.test_triage import add_image
from worker.inference import ModelCache
from worker.triage import triage_study


def _entry(store: Store, uid: str) -> dict[str, object]:
    with store.read() as session:
        return worklist_entry(session, uid)


def test_an_override_survives_retriage_and_a_new_model(
    store: Store, tmp_path: Path, activate: Callable[..., ModelVersion]
) -> None:
    cache = ModelCache(device="cpu", precision="fp32")
    flagged_uid, other_uid = generate_uid(), generate_uid()
    add_image(store, tmp_path, flagged_uid, seed=11)
    add_image(store, tmp_path, other_uid, seed=12)
    activate("v1", tau=0.0)  # every scored study is flagged
    assert triage_study(store, cache, flagged_uid).flagged
    assert triage_study(store, cache, other_uid).flagged

    # A radiologist lowers the flagged study; the model would keep it at the top.
    store.run(
        lambda s: actions.override(
            s, flagged_uid, priority="routine", reason="chronic scarring", actor="dr a"
        )
    )
    before = _entry(store, flagged_uid)
    assert (before["model_flagged"], before["priority"]) == (True, "routine")

    # A new frontal image arrives and the study is triaged again by the same model ...
    add_image(store, tmp_path, flagged_uid, view="AP", seed=13)
    again = triage_study(store, cache, flagged_uid)
    assert again.newly_scored == 1 and again.flagged
    after = _entry(store, flagged_uid)
    assert after["priority"] == "routine" and after["priority_override"] == "routine"
    for name in ("override_reason", "overridden_by", "overridden_at"):
        assert after[name] == before[name], name

    # ... and by a new model version activated meanwhile: still the person's priority.
    activate("v2", tau=0.0)
    add_image(store, tmp_path, flagged_uid, view="PA", seed=14)
    by_v2 = triage_study(store, cache, flagged_uid)
    assert by_v2.model_version == "v2" and by_v2.flagged
    final = _entry(store, flagged_uid)
    assert final["model_version"] == "v2" and final["model_flagged"] is True
    assert final["priority"] == "routine"
    assert final["overridden_by"] == "dr a" and final["override_reason"] == "chronic scarring"
    with store.read() as session:
        rows = [row["study_instance_uid"] for row in worklist(session)]
        study = session.scalars(select(Study).where(Study.study_instance_uid == flagged_uid)).one()
        assert study.priority_override == "routine"
        overrides = session.scalars(
            select(AuditEvent.actor).where(
                AuditEvent.object_uid == flagged_uid, AuditEvent.action == "study_overridden"
            )
        ).all()
    assert rows == [other_uid, flagged_uid]  # the flagged one the person lowered comes after
    assert overrides == ["dr a"]  # only the person ever changed it
