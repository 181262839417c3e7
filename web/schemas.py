"""Pydantic response models of the JSON API, so that the OpenAPI document says what comes back.

Every field is a UID, a figure, a state or a timestamp: no patient identifiers.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema

from governance.models import StudyStatus


def _utc_text(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# UTC with six fractional digits always (pydantic drops them when they are zero), so that
# timestamps of one response sort as text the way they sort as times.
Timestamp = Annotated[
    dt.datetime,
    PlainSerializer(_utc_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# Every state a study can be in, in the order a study goes through them.
STUDY_STATUSES = (
    StudyStatus.RECEIVED,
    StudyStatus.QUEUED,
    StudyStatus.TRIAGING,
    StudyStatus.TRIAGED,
    StudyStatus.NO_FRONTAL,
    StudyStatus.NO_MODEL,
    StudyStatus.FAILED,
)


class ErrorOut(BaseModel):
    """An error meant for a person: one line, no traceback."""

    detail: str = Field(description="What went wrong, in one line.")


class WorklistEntry(BaseModel):
    """One study on the worklist and its current triage result (if any)."""

    study_instance_uid: str
    flagged: bool = Field(description="Score reached tau: read this study first.")
    score: float | None = Field(
        description="Calibrated probability of pneumonia (max over frontal images)."
    )
    tau: float | None = Field(description="Threshold of the policy used.")
    model_version: str | None
    policy_version: int | None
    operating_point: str | None = Field(description="triage, balanced or precision.")
    status: str = Field(
        description="received, queued, triaging, triaged, no_frontal, no_model or failed."
    )
    received_at: Timestamp = Field(description="First instance of the study received (UTC).")
    last_received_at: Timestamp
    queued_at: Timestamp | None
    triaged_at: Timestamp | None


class StageTimestamps(BaseModel):
    """When a study went through each stage (UTC)."""

    first_received_at: Timestamp
    last_received_at: Timestamp
    queued_at: Timestamp | None
    started_at: Timestamp | None = Field(description="Inference of the current result started.")
    finished_at: Timestamp | None
    triaged_at: Timestamp | None


class ImageTimestamps(BaseModel):
    started_at: Timestamp | None
    decoded_at: Timestamp | None
    preprocessed_at: Timestamp | None
    inferred_at: Timestamp | None


class ImageResult(BaseModel):
    """One instance of a study: its score by the result's model version, or why it was skipped."""

    sop_instance_uid: str
    series_instance_uid: str | None
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    view_position: str | None
    body_part: str | None
    received_at: Timestamp
    calling_ae: str
    probability: float | None
    logit: float | None
    scored: bool
    skipped_reason: str | None = Field(
        description="Why the image was not scored (e.g. not frontal)."
    )
    timestamps: ImageTimestamps


class StudyDetail(BaseModel):
    """A study with its current result, per-image results and stage timestamps."""

    study_instance_uid: str
    status: str
    status_detail: str | None
    flagged: bool
    score: float | None
    logit: float | None
    tau: float | None
    model_version: str | None
    model_sha256: str | None
    policy_version: int | None
    operating_point: str | None
    images_scored: int
    images_skipped: int
    patient_sex: str | None = Field(description="M, F, O or null; kept for subgroup monitoring.")
    patient_age_years: int | None
    timestamps: StageTimestamps
    images: list[ImageResult]


class PolicyBrief(BaseModel):
    version: int
    operating_point: str
    tau: float
    effective_from: Timestamp


class ModelOut(BaseModel):
    """A registered model version."""

    version: str
    status: str = Field(description="registered, active or retired.")
    clinical: bool = Field(description="False: a demo/research model, not for clinical use.")
    sha256: str
    architecture: str
    input_size: int
    temperature: float
    description: str | None
    registered_at: Timestamp
    activated_at: Timestamp | None
    policy_in_force: PolicyBrief | None


class ModelsOut(BaseModel):
    active_version: str | None = Field(description="The version that scores new studies.")
    models: list[ModelOut]


class PolicyOut(BaseModel):
    """A threshold policy version: the tau a site's SOP set for a model's operating point."""

    model_version: str
    version: int
    operating_point: str
    tau: float
    target_metric: str | None
    validation: dict[str, Any]
    rationale: str
    approved_by: str
    effective_from: Timestamp
    created_at: Timestamp
    in_force: bool = Field(description="The policy the model's inferences use now.")


class BrokerHealth(BaseModel):
    reachable: bool | None = Field(description="null when not checked.")
    detail: str | None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    store_reachable: bool
    schema_ok: bool
    broker: BrokerHealth
    active_model: str | None


class AuditEventOut(BaseModel):
    """One entry of the audit trail (UIDs, AE titles and figures; never patient identifiers)."""

    id: int
    occurred_at: Timestamp
    actor: str
    actor_address: str | None
    action: str
    event_code: str | None = Field(description="DICOM PS3.15 A.5 event code, where one fits.")
    object_type: str | None
    object_uid: str | None
    outcome: str
    detail: dict[str, Any]
    prev_hash: str = Field(description="row_hash of the event before this one (hash chain).")
    row_hash: str = Field(description="SHA-256 over this event and prev_hash.")
