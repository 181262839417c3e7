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
STUDY_STATUSES = tuple(StudyStatus)


class ErrorOut(BaseModel):
    """An error meant for a person: one line, no traceback."""

    detail: str = Field(description="What went wrong, in one line.")


# What every token-guarded route may answer before it runs (``web.auth``), for OpenAPI.
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or one that is unknown or revoked."},
    403: {"model": ErrorOut, "description": "The token's role may not do this."},
}


Priority = Literal["priority", "routine"]


class PeopleFields(BaseModel):
    """What people did to a study, and the priority that results."""

    model_flagged: bool = Field(description="The model's flag: the score reached tau.")
    priority: Priority = Field(
        description="Effective priority: a person's override where there is one, else the "
        "model's flag. The worklist is ordered by it."
    )
    priority_override: Priority | None = Field(
        description="A radiologist's override; triage never changes it."
    )
    override_reason: str | None
    overridden_by: str | None
    overridden_at: Timestamp | None
    acknowledged_by: str | None
    acknowledged_at: Timestamp | None
    final_read: bool | None = Field(
        description="The radiologist's final read: pneumonia yes (true) or no (false); the "
        "ground truth that monitoring uses."
    )
    final_read_by: str | None
    final_read_at: Timestamp | None


class WorklistFields(BaseModel):
    """Where the site keeps them (CXR_WORKLIST_PHI): what finds the study in the PACS. PHI."""

    accession_number: str | None = Field(default=None, description="PHI; null unless kept.")
    study_date: str | None = Field(default=None, description="YYYY-MM-DD; null unless kept.")
    study_description: str | None = Field(default=None, description="Null unless kept.")
    age_band: str | None = Field(default=None, description="Decade band (40-49, 90+).")
    sex: str | None = Field(default=None, description="M, F, O; null unless kept.")
    viewer_url: str | None = Field(
        default=None, description="Open the study in the site's viewer (CXR_VIEWER_URL_TEMPLATE)."
    )


class WorklistEntry(WorklistFields, PeopleFields):
    """One study on the worklist: its triage result (if any) and what people did to it."""

    study_instance_uid: str
    flagged: bool = Field(description="The model's flag (same as model_flagged).")
    shadow_flagged: bool = Field(
        default=False,
        description="Flagged under a shadow policy: recorded and audited, never a priority.",
    )
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


class StudyDetail(WorklistFields, PeopleFields):
    """A study with its current result, per-image results and stage timestamps."""

    study_instance_uid: str
    status: str
    status_detail: str | None
    flagged: bool
    shadow_flagged: bool = False
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
    scored_sop_instance_uid: str | None = Field(
        default=None, description="The image that decided the score."
    )
    thumbnail_url: str | None = Field(
        default=None, description="Its thumbnail, while the file is kept in the spool."
    )
    heatmap_url: str | None = Field(
        default=None, description="Its Grad-CAM heatmap (CXR_HEATMAPS); not for diagnostic use."
    )
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
    decided_by: dict[str, Any] | None = Field(
        default=None,
        description="For a study's triage: the model version and checksum, the policy and tau, "
        "who approved the policy and who activated the model.",
    )


class MeOut(BaseModel):
    """Who the request's token belongs to."""

    name: str
    role: Literal["radiologist", "admin", "auditor"]
    token_prefix: str = Field(description="The token's first characters, to recognise it by.")


class ActiveModelOut(BaseModel):
    version: str
    clinical: bool = Field(description="False: a demo/research model, not for clinical use.")
    activated_at: Timestamp | None


class PolicyInForceOut(BaseModel):
    version: int
    operating_point: str
    tau: float
    target_metric: str | None
    approved_by: str
    effective_from: Timestamp


class RecentChange(BaseModel):
    kind: Literal["model", "policy"]
    at: Timestamp
    summary: str


class StatusOut(BaseModel):
    """What decides new studies now, and whether it changed recently (the page's banner)."""

    active_model: ActiveModelOut | None
    policy_in_force: PolicyInForceOut | None
    recent_hours: int = Field(description="How far back a change counts as recent.")
    recent_changes: list[RecentChange]


class OverrideIn(BaseModel):
    """A person's priority for a study, with the reason (upwards or downwards)."""

    priority: Priority
    reason: str = Field(min_length=1, max_length=1000, description="Why; required.")


class ClearOverrideIn(BaseModel):
    """Hand the priority back to the model's flag, with the reason."""

    reason: str = Field(min_length=1, max_length=1000)


class FinalReadIn(BaseModel):
    """The radiologist's final read: the label monitoring compares the model with."""

    pneumonia: bool = Field(description="true: pneumonia; false: no pneumonia.")


class PolicyIn(BaseModel):
    """A new threshold policy version for a model version (the site's SOP)."""

    model_version: str
    operating_point: Literal["triage", "balanced", "precision"]
    tau: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Threshold; default: the model's recorded tau for this operating point.",
    )
    rationale: str = Field(min_length=1, max_length=4000)
    approved_by: str = Field(min_length=1, max_length=128, description="Who approved it.")
    effective_from: Timestamp | None = Field(
        default=None, description="When it takes effect (with a time zone); default: now."
    )


class TokenOut(BaseModel):
    """An API token as the store keeps it: never the token itself."""

    name: str
    role: str
    token_prefix: str
    created_by: str
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="Who the token is for.")
    role: Literal["radiologist", "admin", "auditor"]


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The token: shown this once, kept only as its SHA-256.")


class ChainProblemOut(BaseModel):
    event_id: int
    kind: str = Field(description="edited, deleted, reordered, anchor, unkeyed or key.")
    message: str


class AuditVerifyOut(BaseModel):
    """The audit trail's hash chain, walked from the first event to the newest."""

    intact: bool
    events: int
    head_id: int | None
    head_hash: str
    anchor: str = Field(description="ID:HASH of the newest event: keep it outside the store.")
    anchor_checked: bool
    anchors_checked: int = Field(0, description="Anchors checked (expect_head and the file).")
    keyed_events: int = Field(0, description="Events hashed with the site's audit key (HMAC).")
    problem_count: int
    first_bad_id: int | None
    first_problem: str | None
    problems: list[ChainProblemOut]
