"""Model registry and threshold policies on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path
from typing import TypedDict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.db import Store
from governance.errors import ModelIntegrityError, NoActiveModel, TriageError
from governance.models import AuditEvent, ModelVersion, ThresholdPolicy
from governance.policies import policy_in_force, set_policy, set_policy_at_point
from governance.registry import (
    activate_model,
    active_model,
    register_model,
    sha256_file,
    verify_model_file,
)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"not really a model, but bytes to hash")
    return path


def test_register_records_checksum_and_audits(store: Store, weights: Path) -> None:
    model = store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    assert model.sha256 == sha256_file(weights) and len(model.sha256) == 64
    assert model.status == "registered" and model.clinical is False
    with store.read() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "model_registered"))
        assert event is not None and event.detail["sha256"] == model.sha256


def test_register_refuses_duplicates_and_wrong_checksums(store: Store, weights: Path) -> None:
    store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    with pytest.raises(TriageError, match="already"):
        store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    with pytest.raises(ModelIntegrityError, match="expected"):
        store.run(
            lambda s: register_model(
                s, version="v2", path=weights, input_size=64, expected_sha256="0" * 64
            )
        )
    with pytest.raises(ModelIntegrityError, match="does not exist"):
        store.run(
            lambda s: register_model(
                s, version="v3", path=weights.with_name("no.pt"), input_size=64
            )
        )


def test_verify_model_file_detects_a_changed_file(weights: Path) -> None:
    checksum = sha256_file(weights)
    assert verify_model_file(weights, checksum) == weights
    weights.write_bytes(b"changed")
    with pytest.raises(ModelIntegrityError, match="refusing"):
        verify_model_file(weights, checksum)


def test_activation_needs_a_policy_and_retires_the_previous(store: Store, weights: Path) -> None:
    def setup(session: Session) -> None:
        for version in ("v1", "v2"):
            register_model(session, version=version, path=weights, input_size=64)

    def approve(session: Session, version: str) -> None:
        model = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        set_policy(
            session, model, operating_point="balanced", tau=0.4, rationale="r", approved_by="dr who"
        )

    store.run(setup)
    with pytest.raises(NoActiveModel, match="policy"):
        store.run(lambda s: activate_model(s, "v1"))
    for version in ("v1", "v2"):
        store.run(partial(approve, version=version))
    store.run(lambda s: activate_model(s, "v1"))
    store.run(lambda s: activate_model(s, "v2"))
    with store.read() as session:
        active = active_model(session)
        assert active is not None and active.version == "v2"
        statuses = dict(session.execute(select(ModelVersion.version, ModelVersion.status)).all())
        assert statuses == {"v1": "retired", "v2": "active"}


def test_policies_are_versioned_and_take_effect_in_time(store: Store, weights: Path) -> None:
    model = store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

    def policies(session):  # type: ignore[no-untyped-def]
        m = session.get(ModelVersion, model.id)
        first = set_policy(
            session, m, operating_point="triage", tau=0.2, rationale="high sens", approved_by="dr a"
        )
        second = set_policy(
            session,
            m,
            operating_point="precision",
            tau=0.8,
            rationale="later",
            approved_by="dr b",
            effective_from=tomorrow,
        )
        return first.version, second.version

    assert store.run(policies) == (1, 2)
    with store.read() as session:
        now_policy = policy_in_force(session, model.id)
        assert now_policy is not None and now_policy.tau == 0.2
        later = policy_in_force(session, model.id, at=tomorrow + dt.timedelta(minutes=1))
        assert later is not None and later.tau == 0.8 and later.approved_by == "dr b"


def test_a_policy_takes_tau_from_the_point_training_recorded(store: Store, weights: Path) -> None:
    point = {"tau": 0.3, "criterion": "target_sensitivity", "validation": {"sensitivity": 0.95}}
    details = {"operating_points": {"target_sensitivity": point}}
    model = store.run(
        lambda s: register_model(s, version="v1", path=weights, input_size=64, details=details)
    )

    def at_point(operating_point: str, tau: float | None) -> ThresholdPolicy:
        return store.run(
            lambda s: set_policy_at_point(
                s,
                s.get_one(ModelVersion, model.id),
                operating_point=operating_point,
                tau=tau,
                rationale="site SOP",
                approved_by="dr a",
            )
        )

    recorded = at_point("triage", None)
    assert (recorded.tau, recorded.target_metric) == (0.3, "target_sensitivity")
    assert recorded.validation == {"sensitivity": 0.95}
    given = at_point("triage", 0.25)
    assert (given.tau, given.target_metric, given.version) == (0.25, "target_sensitivity", 2)
    assert at_point("balanced", 0.5).target_metric is None
    with pytest.raises(ValueError, match="no recorded 'precision' operating point; give tau"):
        at_point("precision", None)


class PolicyArguments(TypedDict, total=False):
    """The keyword arguments of ``set_policy`` that a refused policy gets wrong."""

    operating_point: str
    tau: float
    rationale: str
    approved_by: str


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operating_point": "aggressive"}, "operating_point"),
        ({"tau": 1.5}, "tau"),
        ({"rationale": " "}, "rationale"),
        ({"approved_by": ""}, "approved_by"),
    ],
)
def test_bad_policies_are_refused(
    store: Store, weights: Path, kwargs: PolicyArguments, message: str
) -> None:
    model = store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    values = PolicyArguments(operating_point="balanced", tau=0.5, rationale="r", approved_by="dr a")
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        store.run(lambda s: set_policy(s, s.get_one(ModelVersion, model.id), **values))


def test_activation_needs_a_policy_in_force_now(store: Store, weights: Path) -> None:
    model = store.run(lambda s: register_model(s, version="v1", path=weights, input_size=64))
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    store.run(
        lambda s: set_policy(
            s,
            s.get_one(ModelVersion, model.id),
            operating_point="balanced",
            tau=0.5,
            rationale="from tomorrow",
            approved_by="dr a",
            effective_from=tomorrow,
        )
    )
    with pytest.raises(NoActiveModel, match="in force"):
        store.run(lambda s: activate_model(s, "v1"))
