"""Policies at triage time: an approved recalibration applies to new studies only; a shadow policy
records and audits flags that never show as priority, until an approved switch to live."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from governance.audit.query import AuditQuery, add_decided_by, query_events
from governance.db import Store
from governance.models import (
    AuditEvent,
    ModelVersion,
    RecalibrationJob,
    RecalibrationState,
    Study,
    StudyInference,
    TriageEvent,
)
from governance.monitoring.labels import concordance
from governance.monitoring.subgroups import shadow_period
from governance.policies import set_mode
from governance.recalibration import decide
from governance.worklist import worklist
from tests.worker.test_triage import add_image, cache  # noqa: F401 (fixture)
from worker.inference import ModelCache
from worker.triage import triage_study


@dataclass
class Result:
    policy_version: int | None
    probability: float | None
    logit: float | None
    flagged: bool
    shadow: bool


def _result(store: Store, study_uid: str) -> Result:
    with store.read() as session:
        r = session.scalar(
            select(StudyInference)
            .join(Study, Study.id == StudyInference.study_id)
            .where(Study.study_instance_uid == study_uid)
        )
        assert r is not None
        return Result(r.policy_version, r.probability, r.logit, r.flagged, r.shadow)


def test_an_approved_recalibration_decides_new_studies_and_the_audit_says_so(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    cache: ModelCache,  # noqa: F811
) -> None:
    model = activate(tau=0.0)
    before = generate_uid()
    add_image(store, tmp_path, before, seed=1)
    triage_study(store, cache, before)

    def candidate(session):  # type: ignore[no-untyped-def]
        job = session.scalar(select(RecalibrationJob))  # the one activation started
        job.state = RecalibrationState.CANDIDATE
        job.candidate_temperature, job.candidate_logit_shift, job.candidate_tau = 2.0, 0.5, 0.0
        job.result = {"after": {"nll": 0.3}}
        return job.id

    job_id = store.run(candidate)
    store.run(lambda s: decide(s, job_id, approve=True, actor="admin1", reason="check half ok"))
    after = generate_uid()
    add_image(store, tmp_path, after, seed=1)
    triage_study(store, cache, after)

    old, new = _result(store, before), _result(store, after)
    assert old.policy_version == 1 and new.policy_version == 2
    assert old.logit is not None and new.logit == old.logit  # the same image
    assert new.probability == pytest.approx(1 / (1 + math.exp(-(old.logit / 2.0 + 0.5))))
    assert _result(store, before).probability == old.probability  # past studies keep theirs
    with store.read() as session:
        records = query_events(session, AuditQuery(object_uid=after, actions=("study_triaged",)))
        decided = add_decided_by(session, records)[0].decided_by
        assert decided is not None and decided["policy_version"] == 2
        assert "recalibration job" in decided["policy"]["rationale"]
        assert decided["policy"]["approved_by"] == "admin1"
        assert model.version == decided["model_version"]


def test_shadow_flags_are_recorded_not_prioritised_until_switched_to_live(
    store: Store,
    tmp_path: Path,
    activate: Callable[..., ModelVersion],
    cache: ModelCache,  # noqa: F811
) -> None:
    model = activate(tau=0.0)  # every scored study reaches tau
    store.run(
        lambda s: set_mode(
            s, s.get_one(ModelVersion, model.id), "shadow", approved_by="admin1", reason="go-live"
        )
    )
    silent = generate_uid()
    add_image(store, tmp_path, silent, seed=2)
    triage_study(store, cache, silent)

    def read_back(session):  # type: ignore[no-untyped-def]
        study = session.scalar(select(Study).where(Study.study_instance_uid == silent))
        study.final_read = True  # the radiologist's read, for concordance
        return None

    store.run(read_back)
    result = _result(store, silent)
    assert result.flagged and result.shadow
    with store.read() as session:
        row = next(r for r in worklist(session) if r["study_instance_uid"] == silent)
        assert row["flagged"] is False and row["shadow_flagged"] is True
        assert row["priority"] == "routine"
        event = session.scalar(select(TriageEvent).where(TriageEvent.study_instance_uid == silent))
        assert event is not None and event.shadow and event.flagged
        flagged = session.scalar(
            select(AuditEvent).where(
                AuditEvent.action == "study_flagged", AuditEvent.object_uid == silent
            )
        )
        assert flagged is not None and flagged.detail["shadow"] is True
        days = concordance(session, model.id)
        assert sum(d["shadow"] for d in days) == 1 and sum(d["agree"] for d in days) == 1

    store.run(
        lambda s: set_mode(
            s, s.get_one(ModelVersion, model.id), "live", approved_by="admin2", reason="signed off"
        )
    )
    live = generate_uid()
    add_image(store, tmp_path, live, seed=3)
    triage_study(store, cache, live)
    with store.read() as session:
        row = next(r for r in worklist(session) if r["study_instance_uid"] == live)
        assert row["flagged"] is True and row["priority"] == "priority"
        switches = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "policy_mode_changed")
        ).all()
        assert [(d["from"], d["to"]) for d in switches] == [("live", "shadow"), ("shadow", "live")]

    def read_live(session):  # type: ignore[no-untyped-def]
        study = session.scalar(select(Study).where(Study.study_instance_uid == live))
        study.final_read = False  # a live flag the radiologist did not confirm
        return None

    store.run(read_live)
    with store.read() as session:
        # The sign-off's figures count the shadow period's studies only, not the live one.
        period = shadow_period(session, min_count=1, bootstrap=10)
    assert period["labelled"] == 1 and period["concordance"] == 1.0
    sensitivity = period["performance"]["sensitivity"]
    assert (sensitivity["k"], sensitivity["n"]) == (1, 1) and sensitivity["low"] < 1.0
