"""A study's triage lifecycle: start, record, fail; the flag rule; the one writer of status.

Every change of a study's ``status`` goes through a function of this module. The decision that
flags a patient is :func:`decide`, a pure function of the image scores and the policy in force:
the flag rule ``p >= tau`` (``governance.policies.flags``, beside tau's policies), the
study-level aggregation (the maximum over its scored frontal images) and "never lower a
priority a person set" (a person's override stands; the decision reports the model's flag and
the effective priority). :func:`record` writes the image and study
inferences, the audit events and the one "study triaged" event in the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import audit
from governance.actions import effective_priority
from governance.db import get_row
from governance.events import emit_study_triaged
from governance.models import (
    ImageInference,
    Instance,
    ModelVersion,
    PolicyMode,
    Study,
    StudyInference,
    StudyStatus,
    ThresholdPolicy,
    utcnow,
)
from governance.monitoring.features import InputFeatures, record_image_features
from governance.policies import flags, policy_in_force, policy_probability
from governance.registry import active_model
from governance.studies import find_study, get_study
from governance.text import clip

logger = logging.getLogger(__name__)

ACTOR = "cxr-triage-worker"
NO_FRONTAL_DETAIL = "no frontal chest radiograph to score"
NO_MODEL_DETAIL = "no active model version; activate one with `cxr-triage model activate`"
MAX_DETAIL = 500
#: Statuses from which a study is queued again (a new instance, a retry, a new model).
REQUEUEABLE = (
    StudyStatus.RECEIVED,
    StudyStatus.TRIAGED,
    StudyStatus.NO_FRONTAL,
    StudyStatus.FAILED,
    StudyStatus.NO_MODEL,
)
#: What a triage event repeats of the study's inference row (the same names in both tables).
_EVENT_COLUMNS = (
    "study_id",
    "model_version_id",
    "probability",
    "tau",
    "policy_version",
    "flagged",
    "shadow",
)


class Policy(Protocol):
    """What :func:`decide` needs of a threshold policy."""

    @property
    def tau(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ImageScore:
    """One image's score by a model version, or why it was not scored, with stage timestamps."""

    instance_id: int
    sop_instance_uid: str
    started_at: dt.datetime
    probability: float | None = None
    logit: float | None = None
    skipped_reason: str | None = None
    decoded_at: dt.datetime | None = None
    preprocessed_at: dt.datetime | None = None
    inferred_at: dt.datetime | None = None
    decode_path: str | None = None  # e.g. "full", "j2k-r3" (worker.decoders)
    # Drift monitoring's view of the image (unit-image statistics before ImageNet
    # standardisation, header values read with the pixels); not an ImageInference column.
    monitoring: InputFeatures | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What a study's image scores and the policy in force decide."""

    status: str
    probability: float | None
    logit: float | None
    tau: float | None
    flagged: bool  # the model's flag, whatever a person set
    priority: str  # the effective priority: a person's override stands
    images_scored: int
    images_skipped: int
    shadow: bool = False  # decided under a shadow policy: the flag is never a priority


def decide(
    scores: Sequence[ImageScore], policy: Policy | None, *, priority_override: str | None = None
) -> Decision:
    """Decide a study from its image scores: the maximum over scored images, compared with tau.

    Parameters
    ----------
    scores
        Every image of the study for one model version, scored or skipped.
    policy
        The policy in force, or None: without one nothing is flagged.
    priority_override
        A person's priority for the study; it stands whatever the model decides.
    """
    scored = [s for s in scores if s.probability is not None]
    skipped = [s for s in scores if s.probability is None and s.skipped_reason]
    best = max(scored, key=lambda s: s.probability or 0.0) if scored else None
    # An approved recalibration re-maps the best image's logit (monotone: the same image).
    probability = policy_probability(policy, best.logit, best.probability) if best else None
    tau = policy.tau if policy is not None else None
    flagged = flags(probability, tau)
    # A ThresholdPolicy also carries its mode and any approved recalibration.
    shadow = getattr(policy, "mode", PolicyMode.LIVE) == PolicyMode.SHADOW
    return Decision(
        status=StudyStatus.TRIAGED if scored else StudyStatus.NO_FRONTAL,
        probability=probability,
        logit=best.logit if best else None,
        tau=tau,
        flagged=flagged,
        priority=effective_priority(priority_override, flagged and not shadow),
        images_scored=len(scored),
        images_skipped=len(skipped),
        shadow=shadow,
    )


@dataclass
class TriageOutcome:
    study_instance_uid: str
    status: str
    model_version: str | None = None
    probability: float | None = None
    tau: float | None = None
    flagged: bool = False
    images_scored: int = 0
    images_skipped: int = 0
    newly_scored: int = 0
    detail: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        study_uid: str,
        model_version: str,
        result: StudyInference | Decision,
        *,
        newly_scored: int = 0,
        skipped: dict[str, str] | None = None,
    ) -> TriageOutcome:
        """The outcome a study inference row or a fresh decision describes."""
        return cls(
            study_uid,
            StudyStatus.TRIAGED if result.images_scored else StudyStatus.NO_FRONTAL,
            model_version,
            result.probability,
            result.tau,
            result.flagged,
            result.images_scored,
            result.images_skipped,
            newly_scored,
            skipped=skipped or {},
        )


@dataclass(frozen=True, slots=True)
class PendingImage:
    """An instance not yet scored by the active model, with the header columns the gateway kept."""

    instance_id: int
    sop_instance_uid: str
    path: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_class_uid: str
    modality: str | None
    view_position: str | None
    body_part: str | None

    @classmethod
    def of(cls, instance: Instance, study_instance_uid: str) -> PendingImage:
        """The pending image of an Instance row of the study ``study_instance_uid``."""
        columns = {
            f.name: getattr(instance, f.name)
            for f in dataclasses.fields(cls)
            if f.name not in ("instance_id", "study_instance_uid")
        }
        return cls(instance_id=instance.id, study_instance_uid=study_instance_uid, **columns)


@dataclass(frozen=True, slots=True)
class TriagePlan:
    study_id: int
    model: ModelVersion | None
    pending: list[PendingImage]
    current: TriageOutcome | None  # the recorded outcome for the active model, if any
    parked: str | None = None  # why start() parked the study instead of beginning it


def plan(session: Session, study_uid: str) -> TriagePlan:
    """What triaging ``study_uid`` with the active model involves.

    Raises
    ------
    NotFound
        The study is not in the store.
    """
    study = get_study(session, study_uid)
    model = active_model(session)
    if model is None:
        return TriagePlan(study.id, None, [], None)
    done = set(
        session.scalars(
            select(ImageInference.instance_id)
            .join(Instance, Instance.id == ImageInference.instance_id)
            .where(Instance.study_id == study.id, ImageInference.model_version_id == model.id)
        )
    )
    pending = [
        PendingImage.of(i, study.study_instance_uid)
        for i in session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        )
        if i.id not in done
    ]
    return TriagePlan(study.id, model, pending, _current(session, study, model))


def start(session: Session, study_uid: str, *, max_deliveries: int | None = None) -> TriagePlan:
    """Plan the study's triage and set its status in one transaction.

    ``triaging`` when there is something to score, ``no_model`` without an active version, and
    back to what its recorded result says when nothing is new (see :func:`up_to_date`).

    The worker's poison guard counts in the same transaction (``Study.deliveries``, committed
    before any image is opened): a run that begins scoring counts one delivery, and
    :func:`record` resets the count when the run finishes; a run that finds nothing to score is
    finished at once. When the count goes over ``max_deliveries`` (runs that kept killing their
    worker), the study is parked as failed instead (``parked`` says why), for a person to retry.

    Raises
    ------
    NotFound
        The study is not in the store.
    """
    triage = plan(session, study_uid)
    study = get_row(session, Study, triage.study_id, "study vanished during triage")
    if triage.model is None:
        no_model(session, triage.study_id)
        study.deliveries = 0
    elif not triage.pending and triage.current is not None:
        up_to_date(session, triage.study_id, triage.model.id)
        study.deliveries = 0
    else:
        study.deliveries = (study.deliveries or 0) + 1
        if max_deliveries is not None and study.deliveries > max_deliveries:
            reason = (
                f"triage task delivered {study.deliveries} times without finishing (its worker "
                "stopped each time, e.g. out of memory on an image); parked until a person "
                "retries it"
            )
            fail(session, study_uid, reason)
            return dataclasses.replace(triage, parked=reason)
        begin(session, triage.study_id)
    return triage


def _current(session: Session, study: Study, model: ModelVersion) -> TriageOutcome | None:
    result = _study_inference(session, study.id, model.id)
    return TriageOutcome.of(study.study_instance_uid, model.version, result) if result else None


def _study_inference(session: Session, study_id: int, model_id: int) -> StudyInference | None:
    return session.scalar(
        select(StudyInference).where(
            StudyInference.study_id == study_id, StudyInference.model_version_id == model_id
        )
    )


def _set_status(study: Study, status: str, detail: str | None) -> None:
    study.status = status
    study.status_detail = clip(detail, MAX_DETAIL)


def begin(session: Session, study_id: int) -> None:
    """The worker starts scoring the study."""
    study = session.get(Study, study_id)
    if study is not None:
        _set_status(study, StudyStatus.TRIAGING, None)


def no_model(session: Session, study_id: int) -> None:
    """No model version is active: the study waits until one is."""
    study = session.get(Study, study_id)
    if study is not None:
        _set_status(study, StudyStatus.NO_MODEL, NO_MODEL_DETAIL)


def up_to_date(session: Session, study_id: int, model_id: int) -> None:
    """A re-triage found nothing new: the status follows from the recorded result again.

    A resent instance or a duplicate message set the study queued; without this it would
    show queued for ever.
    """
    study = session.get(Study, study_id)
    result = _study_inference(session, study_id, model_id)
    if study is None or result is None:
        return
    scored = bool(result.images_scored)
    _set_status(
        study,
        StudyStatus.TRIAGED if scored else StudyStatus.NO_FRONTAL,
        None if scored else NO_FRONTAL_DETAIL,
    )
    study.reconcile_attempts = 0


def fail(session: Session, study_uid: str, reason: str) -> None:
    """Park a study as failed with its reason (no patient identifiers), for a person to retry."""
    study = find_study(session, study_uid)
    if study is None:
        return
    newly_failed = study.status != StudyStatus.FAILED
    _set_status(study, StudyStatus.FAILED, reason)
    if newly_failed:
        # A study that cannot be triaged is a result too: its event lets the results worker
        # notify the RIS (once, not per redelivery). A failure neither sets nor removes a flag.
        result = session.get(StudyInference, study.result_id) if study.result_id else None
        flagged = bool(result is not None and result.flagged)
        emit_study_triaged(
            session,
            study_id=study.id,
            study_instance_uid=study.study_instance_uid,
            status=StudyStatus.FAILED,
            model_version_id=None,
            model_version=None,
            study_inference_id=None,
            probability=None,
            tau=None,
            policy_version=None,
            flagged=flagged,
            previously_flagged=flagged,
        )


def mark_queued(session: Session, study_uids: list[str], at: dt.datetime | None = None) -> None:
    """Note that these studies were handed to the broker."""
    when = at or utcnow()
    for study in session.scalars(select(Study).where(Study.study_instance_uid.in_(study_uids))):
        study.queued_at = when
        if study.status in REQUEUEABLE:
            study.status = StudyStatus.QUEUED


@dataclass(frozen=True, slots=True)
class ScoringModel:
    """The model version that scored the images: its row id, version name and checksum."""

    id: int
    version: str
    sha256: str


def record(
    session: Session,
    study_id: int,
    model: ScoringModel,
    scores: Sequence[ImageScore],
    started: dt.datetime,
) -> TriageOutcome:
    """Record new image scores and the study's decision, its status, audit and event.

    Images another run of the same study already recorded are kept as they are; the decision
    is taken over every image of the study scored by ``model``.

    Raises
    ------
    NotFound
        The study vanished during triage.
    """
    study = get_row(session, Study, study_id, "study vanished during triage")
    _add_image_inferences(session, model, scores)
    record_image_features(
        session,
        study_id=study.id,
        model_version_id=model.id,
        measured={s.instance_id: s.monitoring for s in scores},
    )
    all_scores = _study_scores(session, study.id, model.id)
    policy = policy_in_force(session, model.id)
    decision = decide(all_scores, policy, priority_override=study.priority_override)
    result = _study_inference(session, study.id, model.id)
    was_flagged = bool(result and result.flagged)
    result = _upsert_study_inference(session, study, model, policy, decision, result, started)
    study.result_id = result.id
    _set_status(study, decision.status, None if decision.images_scored else NO_FRONTAL_DETAIL)
    study.triaged_at = result.finished_at
    study.reconcile_attempts = 0  # the reconciler's count starts again
    study.deliveries = 0  # the run finished: the poison guard's count starts again (start)
    _audit_and_emit(session, study, model, result, decision, was_flagged)
    skipped = {
        s.sop_instance_uid: reason
        for s in all_scores
        if s.probability is None and (reason := s.skipped_reason)
    }
    newly_scored = sum(1 for s in scores if s.probability is not None)
    return TriageOutcome.of(
        study.study_instance_uid,
        model.version,
        decision,
        newly_scored=newly_scored,
        skipped=skipped,
    )


def _add_image_inferences(
    session: Session, model: ScoringModel, scores: Iterable[ImageScore]
) -> None:
    scores = list(scores)
    existing = set(
        session.scalars(
            select(ImageInference.instance_id).where(
                ImageInference.model_version_id == model.id,
                ImageInference.instance_id.in_([s.instance_id for s in scores]),
            )
        )
    )
    for s in scores:
        if s.instance_id in existing:
            continue  # a concurrent run of the same study got there first
        columns = {
            f.name: getattr(s, f.name)
            for f in dataclasses.fields(s)
            if f.name not in ("sop_instance_uid", "monitoring")
        }
        # A reason may quote header text: printable and cut to the column, never a DataError.
        columns["skipped_reason"] = clip(columns["skipped_reason"], ImageInference.skipped_reason)
        session.add(ImageInference(model_version_id=model.id, model_sha256=model.sha256, **columns))
    session.flush()


def _study_scores(session: Session, study_id: int, model_id: int) -> list[ImageScore]:
    rows = session.execute(
        select(ImageInference, Instance.sop_instance_uid)
        .join(Instance, Instance.id == ImageInference.instance_id)
        .where(Instance.study_id == study_id, ImageInference.model_version_id == model_id)
    ).all()
    return [
        ImageScore(
            instance_id=row.instance_id,
            sop_instance_uid=uid,
            started_at=row.started_at,
            probability=row.probability,
            logit=row.logit,
            skipped_reason=row.skipped_reason,
        )
        for row, uid in rows
    ]


def _upsert_study_inference(
    session: Session,
    study: Study,
    model: ScoringModel,
    policy: ThresholdPolicy | None,
    decision: Decision,
    result: StudyInference | None,
    started: dt.datetime,
) -> StudyInference:
    if result is None:
        result = StudyInference(study_id=study.id, model_version_id=model.id, runs=0)
        session.add(result)
    result.model_sha256 = model.sha256
    result.policy_id = policy.id if policy else None
    result.policy_version = policy.version if policy else None
    result.tau = decision.tau
    result.probability = decision.probability
    result.logit = decision.logit
    result.flagged = decision.flagged
    result.shadow = decision.shadow
    result.images_scored = decision.images_scored
    result.images_skipped = decision.images_skipped
    result.queued_at = study.queued_at
    result.started_at = started
    result.finished_at = utcnow()
    result.runs = (result.runs or 0) + 1
    session.flush()
    return result


def _audit_and_emit(
    session: Session,
    study: Study,
    model: ScoringModel,
    result: StudyInference,
    decision: Decision,
    was_flagged: bool,
) -> None:
    detail = {
        "model_version": model.version,
        "model_sha256": model.sha256,
        "policy_version": result.policy_version,
        "tau": decision.tau,
        "probability": decision.probability,
        "flagged": decision.flagged,
        "shadow": decision.shadow,
        "images_scored": decision.images_scored,
        "images_skipped": decision.images_skipped,
    }
    actions = [audit.Action.STUDY_TRIAGED]
    if decision.flagged and not was_flagged:
        actions.append(audit.Action.STUDY_FLAGGED)
    for action in actions:
        audit.record(
            session,
            "study",
            study.study_instance_uid,
            actor=ACTOR,
            action=action,
            detail=detail,
        )
    emit_study_triaged(
        session,
        **result.columns(*_EVENT_COLUMNS),
        study_instance_uid=study.study_instance_uid,
        status=study.status,
        model_version=model.version,
        study_inference_id=result.id,
        previously_flagged=was_flagged,
    )
