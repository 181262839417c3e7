"""A store with a known worklist: studies, instances, models, policies and inferences.

The scenario (times after ``t0``, two hours ago):

=====  ===========  ========  ======  =====================================
study  received     status    score   result
=====  ===========  ========  ======  =====================================
C      t0           triaged   0.20    not flagged; triaged 60 s later
D      t0 + 5 min   queued    --      no result yet
A      t0 + 10 min  triaged   0.80    flagged; 2 images, lateral skipped; 30 s
B      t0 + 20 min  triaged   0.95    flagged; triaged 45 s later
E      t0 + 30 min  no_frontal --     only a lateral, skipped; 20 s
=====  ===========  ========  ======  =====================================

so the worklist reads B, A (flagged, highest score first), then C, D, E (oldest first).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance.db import Store
from governance.models import (
    ImageInference,
    Instance,
    ModelVersion,
    Role,
    Study,
    StudyInference,
    StudyStatus,
    ThresholdPolicy,
    utcnow,
)
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from governance.studies import ReceivedInstance, record_instance
from governance.tokens import create_token
from web.app import create_app

ROOT = "1.2.826.0.1.3680043.10.999"
SKIP_LATERAL = "not a frontal view (ViewPosition LL)"


@dataclass
class Scenario:
    """What the populated store holds, for the tests to compare with."""

    t0: dt.datetime
    uids: dict[str, str]
    order: list[str]
    model_version: str = "demo-1"
    retired_version: str = "demo-0"
    sha256: str = ""
    tau: float = 0.35
    policy_version: int = 2
    instances: int = 6
    images_scored: int = 3
    images_skipped: int = 2
    study_inferences: int = 4
    latencies: list[float] = field(default_factory=lambda: [30.0, 45.0, 60.0, 20.0])
    by_status: dict[str, int] = field(
        default_factory=lambda: {"triaged": 3, "queued": 1, "no_frontal": 1}
    )


def study_uid(letter: str) -> str:
    return f"{ROOT}.{ord(letter)}"


def _instance(
    session: Session, study: str, number: int, view: str, at: dt.datetime, spool: Path
) -> Instance:
    sop = f"{study}.{number}"
    instance, _ = record_instance(
        session,
        ReceivedInstance(
            study_instance_uid=study,
            series_instance_uid=f"{study}.0",
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=str(spool / f"{sop}.dcm"),
            size_bytes=1000 + number,
            calling_ae="ORTHANC",
            peer_address="127.0.0.1",
            modality="DX",
            view_position=view,
            body_part="CHEST",
            patient_sex="F",
            patient_age_years=61,
            received_at=at,
        ),
    )
    return instance


def _image(
    session: Session,
    instance: Instance,
    model: ModelVersion,
    start: dt.datetime,
    probability: float | None,
) -> None:
    s = dt.timedelta(seconds=1)
    session.add(
        ImageInference(
            instance_id=instance.id,
            model_version_id=model.id,
            model_sha256=model.sha256,
            probability=probability,
            logit=None if probability is None else math.log(probability / (1 - probability)),
            skipped_reason=SKIP_LATERAL if probability is None else None,
            started_at=start,
            decoded_at=start + s if probability is not None else None,
            preprocessed_at=start + 2 * s if probability is not None else None,
            inferred_at=start + 3 * s if probability is not None else None,
        )
    )


def _result(
    session: Session,
    uid: str,
    model: ModelVersion,
    policy: ThresholdPolicy,
    probability: float | None,
    scored: int,
    skipped: int,
    latency_s: float,
    status: str,
) -> None:
    study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
    received = study.first_received_at
    result = StudyInference(
        study_id=study.id,
        model_version_id=model.id,
        model_sha256=model.sha256,
        policy_id=policy.id,
        policy_version=policy.version,
        tau=policy.tau,
        probability=probability,
        logit=None if probability is None else math.log(probability / (1 - probability)),
        flagged=probability is not None and probability >= policy.tau,
        images_scored=scored,
        images_skipped=skipped,
        queued_at=received + dt.timedelta(seconds=5),
        started_at=received + dt.timedelta(seconds=6),
        finished_at=received + dt.timedelta(seconds=latency_s - 1),
    )
    session.add(result)
    session.flush()
    study.result_id = result.id
    study.status = status
    study.queued_at = received + dt.timedelta(seconds=5)
    study.triaged_at = received + dt.timedelta(seconds=latency_s)


def populate(store: Store, model_dir: Path, spool: Path) -> Scenario:
    """Fill ``store`` with the scenario of this module's docstring."""
    t0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=2)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "demo-0.pt").write_bytes(b"old demo weights")
    (model_dir / "demo-1.pt").write_bytes(b"demo weights, not clinical")
    uids = {letter: study_uid(letter) for letter in "ABCDE"}
    minutes = {"C": 0, "D": 5, "A": 10, "B": 20, "E": 30}

    def work(session: Session) -> str:
        old = register_model(
            session,
            version="demo-0",
            path=model_dir / "demo-0.pt",
            input_size=224,
            description="older demo",
        )
        set_policy(
            session, old, operating_point="balanced", tau=0.6, rationale="first", approved_by="qa"
        )
        activate_model(session, "demo-0")
        model = register_model(
            session,
            version="demo-1",
            path=model_dir / "demo-1.pt",
            input_size=224,
            description="synthetic demo model",
        )
        set_policy(
            session,
            model,
            operating_point="balanced",
            tau=0.5,
            rationale="initial",
            approved_by="qa",
        )
        policy = set_policy(
            session,
            model,
            operating_point="triage",
            tau=0.35,
            rationale="site SOP: sensitivity 0.95",
            approved_by="radiology lead",
            target_metric="sensitivity>=0.95",
        )
        activate_model(session, "demo-1")
        at = {letter: t0 + dt.timedelta(minutes=m) for letter, m in minutes.items()}
        two = dt.timedelta(seconds=2)
        a_pa = _instance(session, uids["A"], 1, "PA", at["A"], spool)
        a_ll = _instance(session, uids["A"], 2, "LL", at["A"] + two, spool)
        b_pa = _instance(session, uids["B"], 1, "AP", at["B"], spool)
        c_pa = _instance(session, uids["C"], 1, "PA", at["C"], spool)
        _instance(session, uids["D"], 1, "PA", at["D"], spool)
        e_ll = _instance(session, uids["E"], 1, "LL", at["E"], spool)
        session.flush()
        for instance, probability in (
            (a_pa, 0.80),
            (a_ll, None),
            (b_pa, 0.95),
            (c_pa, 0.20),
            (e_ll, None),
        ):
            _image(
                session,
                instance,
                model,
                instance.received_at + dt.timedelta(seconds=6),
                probability,
            )
        _result(session, uids["A"], model, policy, 0.80, 1, 1, 30.0, StudyStatus.TRIAGED)
        _result(session, uids["B"], model, policy, 0.95, 1, 0, 45.0, StudyStatus.TRIAGED)
        _result(session, uids["C"], model, policy, 0.20, 1, 0, 60.0, StudyStatus.TRIAGED)
        _result(session, uids["E"], model, policy, None, 0, 1, 20.0, StudyStatus.NO_FRONTAL)
        d = session.scalars(select(Study).where(Study.study_instance_uid == uids["D"])).one()
        d.status = StudyStatus.QUEUED
        d.queued_at = at["D"] + dt.timedelta(seconds=5)
        return model.sha256

    sha256 = store.run(work)
    return Scenario(t0=t0, uids=uids, order=[uids[x] for x in "BACDE"], sha256=sha256)


@pytest.fixture
def web_settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


@pytest.fixture
def scenario(store: Store, web_settings: Settings) -> Scenario:
    return populate(store, web_settings.model_path, web_settings.spool_path)


def bearer(token: str) -> dict[str, str]:
    """The header that authenticates a request with ``token``."""
    return {"Authorization": f"Bearer {token}"}


def make_tokens(store: Store, suffix: str = "") -> dict[str, str]:
    """One token per role, named after the role (``radiologist``, ``admin``, ``auditor``)."""

    def work(session: Session) -> dict[str, str]:
        return {
            role: create_token(session, name=f"{role}{suffix}", role=role, created_by="pytest")[1]
            for role in Role.ALL
        }

    return store.run(work)


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    """A valid token for each role, by role."""
    return make_tokens(store)


@pytest.fixture
def client(store: Store, web_settings: Settings) -> Iterator[TestClient]:
    """The application over ``store``, called without credentials."""
    with TestClient(create_app(web_settings, store)) as test_client:
        yield test_client


def _as(client: TestClient, token: str) -> TestClient:
    authed = TestClient(client.app)
    authed.headers.update(bearer(token))
    return authed


@pytest.fixture
def radiologist(client: TestClient, tokens: dict[str, str]) -> TestClient:
    """The same application, called with a radiologist's token."""
    return _as(client, tokens[Role.RADIOLOGIST])


@pytest.fixture
def admin(client: TestClient, tokens: dict[str, str]) -> TestClient:
    """The same application, called with an admin's token."""
    return _as(client, tokens[Role.ADMIN])


@pytest.fixture
def auditor(client: TestClient, tokens: dict[str, str]) -> TestClient:
    """The same application, called with an auditor's token."""
    return _as(client, tokens[Role.AUDITOR])
