"""ORM models of the store. The schema changes only through Alembic revisions in ``migrations``.

No patient identifiers are stored: a study is known by its Study Instance UID; the only patient
attributes kept are sex and age in years, for subgroup monitoring.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)
#: Who did something: a user's or token's name, ``cli:USER``, an AE title or a component.
Actor = Annotated[str, mapped_column(String(128))]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Every table's base: its integer surrogate key ``id`` and the store's column types."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}

    # First in each table, as the migrations create it (a base's columns would otherwise go last).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)

    def columns(self, *names: str) -> dict[str, Any]:
        """The row's values by column name: those named, or every column in table order."""
        return {name: getattr(self, name) for name in names or self.__table__.columns.keys()}


class StudyStatus(enum.StrEnum):
    # In the order a study goes through them (listings and metrics keep this order).
    RECEIVED = "received"
    QUEUED = "queued"
    TRIAGING = "triaging"
    TRIAGED = "triaged"
    NO_FRONTAL = "no_frontal"
    NO_MODEL = "no_model"
    FAILED = "failed"


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RECEIVED)
    status_detail: Mapped[str | None] = mapped_column(Text)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[dt.datetime | None]
    triaged_at: Mapped[dt.datetime | None]
    patient_sex: Mapped[str | None] = mapped_column(String(1))
    patient_age_years: Mapped[int | None] = mapped_column(Integer)
    # Keyed pseudonym (HMAC-SHA256) of the Patient ID: links a patient's studies in the audit
    # without keeping the ID itself.
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    # Worklist fields, kept only where the site set CXR_WORKLIST_PHI (PHI: shown to
    # radiologists, never logged, sent to a broker or put in an audit detail).
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))  # DICOM DA, YYYYMMDD
    study_description: Mapped[str | None] = mapped_column(String(64))
    # What people did. A person's priority override stands: triage never changes these.
    priority_override: Mapped[str | None] = mapped_column(String(16))
    override_reason: Mapped[str | None] = mapped_column(Text)
    overridden_by: Mapped[Actor | None]
    overridden_at: Mapped[dt.datetime | None]
    acknowledged_by: Mapped[Actor | None]
    acknowledged_at: Mapped[dt.datetime | None]
    final_read: Mapped[bool | None] = mapped_column(Boolean)
    final_read_by: Mapped[Actor | None]
    final_read_at: Mapped[dt.datetime | None]
    result_id: Mapped[int | None] = mapped_column(
        ForeignKey("study_inferences.id", use_alter=True, ondelete="SET NULL")
    )
    # Triage runs that began scoring and never recorded a result (counted and reset by
    # governance.triage_results.start and record): a study that keeps killing its
    # worker (a decoder crash, the OOM killer) is parked as failed instead of looping, and
    # the reconciler leaves it to a person (governance.reconciler: how the counts differ).
    deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # How often the reconciler queued the study again without it being triaged; bounded, and
    # reset by a triage or by a person's retry.
    reconcile_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    instances: Mapped[list[Instance]] = relationship(
        back_populates="study", order_by="Instance.id", cascade="all, delete-orphan"
    )
    result: Mapped[StudyInference | None] = relationship(foreign_keys=[result_id], post_update=True)


class Instance(Base):
    __tablename__ = "instances"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    modality: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # When spool retention removed the file: the row (header columns, size, inferences) stays
    # for monitoring and audit; only the pixels are gone.
    pruned_at: Mapped[dt.datetime | None]

    study: Mapped[Study] = relationship(back_populates="instances")


class ModelStatus(enum.StrEnum):
    REGISTERED = "registered"
    ACTIVE = "active"
    RETIRED = "retired"


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(32), default="resnet50")
    input_size: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float, default=1.0)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.REGISTERED)
    clinical: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    registered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[dt.datetime | None]

    policies: Mapped[list[ThresholdPolicy]] = relationship(
        back_populates="model_version", order_by="ThresholdPolicy.version"
    )


class OperatingPoint(enum.StrEnum):
    TRIAGE = "triage"
    BALANCED = "balanced"
    PRECISION = "precision"
    ALL = enum.nonmember((TRIAGE, BALANCED, PRECISION))


class PolicyMode(enum.StrEnum):
    LIVE = "live"
    SHADOW = "shadow"
    ALL = enum.nonmember((LIVE, SHADOW))


class ThresholdPolicy(Base):
    __tablename__ = "threshold_policies"
    __table_args__ = (UniqueConstraint("model_version_id", "version"),)

    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    operating_point: Mapped[str] = mapped_column(String(16))
    tau: Mapped[float] = mapped_column(Float)
    target_metric: Mapped[str | None] = mapped_column(String(64))
    validation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rationale: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[Actor]
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # "live" flags show as priority; "shadow" flags are computed, stored, audited and compared
    # with final reads, but never shown as priority, exported or notified (go-live sign-off).
    mode: Mapped[str] = mapped_column(String(8), default=PolicyMode.LIVE, server_default="live")
    # A recalibration an admin approved: the study's probability is sigmoid(logit / temperature
    # + logit_shift) instead of the model's own calibration. None keeps the model's.
    temperature: Mapped[float | None] = mapped_column(Float)
    logit_shift: Mapped[float | None] = mapped_column(Float)

    model_version: Mapped[ModelVersion] = relationship(back_populates="policies")


def policy_uid(model_version: str, policy_version: int) -> str:
    """A threshold policy's object UID in the audit trail: ``<model version>/v<policy version>``."""
    return f"{model_version}/v{policy_version}"


class _ModelScore:
    """What a score by one model version carries: the version, its file's checksum, the
    calibrated probability and the logit (None where nothing was scored)."""

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    logit: Mapped[float | None] = mapped_column(Float)


class ImageInference(_ModelScore, Base):
    """The score of one image by one model version (or why it was not scored)."""

    __tablename__ = "image_inferences"
    __table_args__ = (UniqueConstraint("instance_id", "model_version_id"),)

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    skipped_reason: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[dt.datetime]
    decoded_at: Mapped[dt.datetime | None]
    preprocessed_at: Mapped[dt.datetime | None]
    inferred_at: Mapped[dt.datetime | None]
    # How the pixels were decoded: "full", or "j2k-rN" (JPEG 2000 at reduce factor N).
    decode_path: Mapped[str | None] = mapped_column(String(16))

    instance: Mapped[Instance] = relationship()


class StudyInference(_ModelScore, Base):
    """A study's triage by one model version: max over its frontal images, compared with tau."""

    __tablename__ = "study_inferences"
    __table_args__ = (
        UniqueConstraint("study_id", "model_version_id"),
        Index("ix_study_inferences_model_finished", "model_version_id", "finished_at"),
    )

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_policies.id"))
    policy_version: Mapped[int | None] = mapped_column(Integer)
    tau: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    images_scored: Mapped[int] = mapped_column(Integer, default=0)
    images_skipped: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime]
    runs: Mapped[int] = mapped_column(Integer, default=1)
    # Decided under a shadow policy: the flag is kept and audited but is not a priority.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())

    study: Mapped[Study] = relationship(foreign_keys=[study_id])
    model_version: Mapped[ModelVersion] = relationship()
    policy: Mapped[ThresholdPolicy | None] = relationship()


class TriageEvent(Base):
    """One "study triaged" event: written in the transaction that records a study's triage.

    The outbox of everything that follows a triage (result export, flag notifications,
    monitoring): a consumer reads events in ``id`` order and keeps its own progress, so an event
    is never lost with a process and is seen once per consumer.
    """

    __tablename__ = "triage_events"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    study_inference_id: Mapped[int | None] = mapped_column(
        ForeignKey("study_inferences.id", ondelete="CASCADE")
    )
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    model_version: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)
    tau: Mapped[float | None] = mapped_column(Float)
    policy_version: Mapped[int | None] = mapped_column(Integer)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    previously_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Under a shadow policy: consumers must not export or notify the flag.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


class DeliveryState:
    """States of a result delivery (an export to a DICOM peer or a notification to a sink)."""

    PENDING = "pending"  # not yet tried
    SENDING = "sending"  # claimed by a results worker (a claim older than the lease is stale)
    RETRYING = "retrying"  # a transient failure; tried again at next_attempt_at
    SENT = "sent"
    FAILED = "failed"  # parked: a permanent failure or the last attempt; a person may retry
    ALL = (PENDING, SENDING, RETRYING, SENT, FAILED)


class DeliveryKind:
    SR = "sr"  # TID 1500 structured report, C-STORE to a DICOM destination
    HEATMAP = "heatmap"  # Grad-CAM Secondary Capture, C-STORE
    WEBHOOK = "webhook"  # signed JSON POST
    HL7 = "hl7"  # HL7 v2 ORU^R01 over MLLP
    DICOM = (SR, HEATMAP)
    ALL = (SR, HEATMAP, WEBHOOK, HL7)


class ResultDelivery(Base):
    """One thing to deliver after one triage event to one destination, and how it went.

    Unique on (event, destination, kind): a redelivered message or a sweep never makes a
    second row, so each event is exported and notified at most once per destination (the
    event id is the idempotency key a receiver sees). No patient identifiers.
    """

    __tablename__ = "result_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "destination", "kind"),
        Index("ix_result_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    event_id: Mapped[int] = mapped_column(
        ForeignKey("triage_events.id", ondelete="CASCADE"), index=True
    )
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    last_error: Mapped[str | None] = mapped_column(String(500))
    next_attempt_at: Mapped[dt.datetime | None]
    claimed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
    # The DICOM object sent (SR or Secondary Capture): kept so a retry resends the same
    # instance, and so a later report names this one as its predecessor.
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    path: Mapped[str | None] = mapped_column(String(1024))


class AuditEvent(Base):
    """One entry of the audit trail. The application only ever inserts rows here."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_object_uid", "object_uid"),
    )

    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[Actor]
    actor_address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    event_code: Mapped[str | None] = mapped_column(String(16))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_uid: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))
    # None: plain SHA-256 (rows from before revision 0004); HMAC_SCHEME: keyed with the site's
    # audit key, which the database does not hold (governance.audit_key).
    hash_scheme: Mapped[str | None] = mapped_column(String(16))

    def canonical(self, prev_hash: str) -> bytes:
        """The bytes the row's hash covers: its id, content and the previous row's hash.

        Frozen: changing this breaks every existing chain (migration 0002, which chained
        existing rows, keeps its own copy).
        """
        content = {
            "id": self.id,
            "occurred_at": self.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": self.actor,
            "actor_address": self.actor_address,
            "action": self.action,
            "event_code": self.event_code,
            "object_type": self.object_type,
            "object_uid": self.object_uid,
            "outcome": self.outcome,
            "detail": self.detail or {},
            "prev_hash": prev_hash,
        }
        return json.dumps(
            content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode("utf-8")

    def compute_hash(self, prev_hash: str, key: bytes | None = None) -> str:
        """SHA-256 of :meth:`canonical`, or HMAC-SHA256 with ``key`` (``HMAC_SCHEME`` rows)."""
        if key is None:
            return hashlib.sha256(self.canonical(prev_hash)).hexdigest()
        return hmac.new(key, self.canonical(prev_hash), hashlib.sha256).hexdigest()


GENESIS_HASH = "0" * 64
HMAC_SCHEME = "hmac-sha256"


class Role(enum.StrEnum):
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    AUDITOR = "auditor"
    ALL = enum.nonmember((RADIOLOGIST, ADMIN, AUDITOR))


class ApiToken(Base):
    """An API token: shown once when created, stored only as its SHA-256."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(12))
    created_by: Mapped[Actor]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class ImageFeature(Base):
    """What monitoring keeps of one scored (or skipped) image: no pixels, no patient identifiers.

    The score, statistics of the model input before ImageNet standardisation, and the header
    features drift is measured on; age as a band, never a birth date.
    """

    __tablename__ = "image_features"
    __table_args__ = (Index("ix_image_features_model_recorded", "model_version_id", "recorded_at"),)

    image_inference_id: Mapped[int] = mapped_column(
        ForeignKey("image_inferences.id", ondelete="CASCADE"), unique=True
    )
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    probability: Mapped[float | None] = mapped_column(Float)
    img_mean: Mapped[float | None] = mapped_column(Float)
    img_std: Mapped[float | None] = mapped_column(Float)
    img_frac_zero: Mapped[float | None] = mapped_column(Float)
    img_frac_one: Mapped[float | None] = mapped_column(Float)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    pixel_spacing: Mapped[str | None] = mapped_column(String(16))
    bits_stored: Mapped[str | None] = mapped_column(String(8))
    photometric: Mapped[str | None] = mapped_column(String(16))
    age_band: Mapped[str | None] = mapped_column(String(8))
    sex: Mapped[str | None] = mapped_column(String(1))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DriftRun(Base):
    """One drift run: its window, inputs and every test's result; one per window key."""

    __tablename__ = "drift_runs"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # Idempotency: the scheduler's window ("beat:<model>:<period start>"); a second beat that
    # tries the same window hits the unique constraint and does nothing.
    window_key: Mapped[str] = mapped_column(String(128), unique=True)
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    window_start: Mapped[dt.datetime | None]
    window_end: Mapped[dt.datetime | None]
    n_studies: Mapped[int] = mapped_column(Integer, default=0)
    psi: Mapped[float | None] = mapped_column(Float)
    flag_rate: Mapped[float | None] = mapped_column(Float)
    expected_flag_rate: Mapped[float | None] = mapped_column(Float)
    alerted: Mapped[bool] = mapped_column(Boolean, default=False)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    results: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DriftBaseline(Base):
    """A production period an admin pinned as a model version's drift baseline."""

    __tablename__ = "drift_baselines"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    starts_at: Mapped[dt.datetime]
    ends_at: Mapped[dt.datetime]
    pinned_by: Mapped[Actor]
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StudyLabel(Base):
    """A reference label of a study imported from a file (final reads live on the study)."""

    __tablename__ = "study_labels"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), unique=True)
    label: Mapped[bool] = mapped_column(Boolean)
    subgroups: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(256))
    imported_by: Mapped[Actor]
    imported_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RecalibrationState:
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting-for-labels"
    CANDIDATE = "candidate"
    APPROVED = "approved"
    REJECTED = "rejected"
    FAILED = "failed"
    ALL = (QUEUED, RUNNING, WAITING, CANDIDATE, APPROVED, REJECTED, FAILED)


class RecalibrationJob(Base):
    """A recalibration of a model version on labelled production: a candidate a person decides."""

    __tablename__ = "recalibration_jobs"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    base_policy_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_policies.id"))
    state: Mapped[str] = mapped_column(String(24))
    trigger: Mapped[str] = mapped_column(String(32))
    window_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    labels_used: Mapped[int] = mapped_column(Integer, default=0)
    labels_needed: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    candidate_temperature: Mapped[float | None] = mapped_column(Float)
    candidate_logit_shift: Mapped[float | None] = mapped_column(Float)
    candidate_tau: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    decided_by: Mapped[Actor | None]
    decided_at: Mapped[dt.datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    new_policy_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_policies.id"))


class WebSession(Base):
    """A web login: the cookie holds a random id, the store only its SHA-256.

    It ends when idle too long (``last_seen_at``), at ``expires_at`` whatever the activity,
    at logout, or when its token is revoked (``ended_at`` and ``ended_reason``).
    """

    __tablename__ = "web_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    actor_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    ended_reason: Mapped[str | None] = mapped_column(String(32))
