"""The radiologists' JSON API: the worklist, a study, and what they do to a study.

Every route needs a token (``web.auth``): the worklist and studies the radiologist role;
``/api/me`` and ``/api/status`` (what decides new studies, for the pages' banner) any role.
Opening a study is audited (DICOM 110103, once per person and study in ten minutes); each
action is audited with what it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.types import DecoratedCallable
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance import actions
from governance import worklist as worklist_reads
from governance.db import Store
from governance.models import Role
from governance.tokens import Identity
from web.auth import RequireRole, client_address
from web.deps import StoreDep, get_settings, get_store, http_errors, read_store
from web.schemas import (
    REFUSALS,
    STUDY_STATUSES,
    ClearOverrideIn,
    ErrorOut,
    FinalReadIn,
    MeOut,
    OverrideIn,
    StatusOut,
    StudyDetail,
    WorklistEntry,
)

logger = logging.getLogger(__name__)

MAX_LIMIT = 5000

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No study with this UID."}
}

router = APIRouter(prefix="/api", tags=["radiologist"], responses=REFUSALS)

Radiologist = Annotated[Identity, Depends(RequireRole(Role.RADIOLOGIST))]
AnyRole = Annotated[Identity, Depends(RequireRole(*Role.ALL))]
StudyUid = Annotated[str, Path(description="Study Instance UID")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def with_viewer_url(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The row with ``viewer_url``: the site's viewer link for the study, or None."""
    template = settings.viewer_url_template
    uid = row["study_instance_uid"]
    row["viewer_url"] = (
        template.format(study_instance_uid=quote(uid, safe="")) if template else None
    )
    return row


@router.get("/me", response_model=MeOut, summary="Who this token belongs to, and its role")
def get_me(identity: AnyRole) -> dict[str, Any]:
    return {"name": identity.name, "role": identity.role, "token_prefix": identity.token_prefix}


@router.get(
    "/status",
    response_model=StatusOut,
    summary="The active model and policy in force, and whether either changed recently",
)
def get_status(
    store: StoreDep,
    _identity: AnyRole,
    recent_hours: Annotated[
        int, Query(ge=1, le=24 * 30, description="A change within this many hours is recent.")
    ] = 24,
) -> dict[str, Any]:
    return read_store(
        store, lambda session: worklist_reads.serving_status(session, recent_hours=recent_hours)
    )


@router.get(
    "/worklist",
    response_model=list[WorklistEntry],
    summary="Studies to read: priority first (a person's override, else the model's flag) by "
    "score, then oldest first",
)
def get_worklist(
    store: StoreDep,
    settings: SettingsDep,
    _identity: Radiologist,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most studies returned.")] = 500,
    status: Annotated[
        list[str] | None,
        Query(
            description=f"Keep only studies in these states ({', '.join(STUDY_STATUSES)}); "
            "repeatable."
        ),
    ] = None,
    received_after: Annotated[
        dt.datetime | None,
        Query(
            description="Only studies first received at or after this time (ISO 8601 with a "
            "zone, e.g. 2026-11-25T08:00:00Z)."
        ),
    ] = None,
) -> list[dict[str, Any]]:
    if received_after is not None and received_after.tzinfo is None:
        raise HTTPException(
            status_code=422, detail="received_after needs a time zone (e.g. a trailing Z)"
        )
    if received_after is not None:
        try:
            received_after = received_after.astimezone(dt.UTC)
        except OverflowError:
            raise HTTPException(
                status_code=422, detail="received_after is outside the calendar"
            ) from None
    if status:
        unknown = sorted(set(status) - set(STUDY_STATUSES))
        if unknown:
            raise HTTPException(
                status_code=422,
                detail=f"unknown status {', '.join(unknown)}; "
                f"use one of {', '.join(STUDY_STATUSES)}",
            )
    rows = read_store(
        store,
        lambda session: worklist_reads.worklist(
            session,
            limit=limit,
            statuses=status,
            received_after=received_after,
            phi=settings.worklist_phi,
        ),
    )
    return [with_viewer_url(row, settings) for row in rows]


def note_viewed(store: Store, request: Request, identity: Identity, uid: str, via: str) -> None:
    """Audit that a person opened a study, unless they did within the last ten minutes."""
    if read_store(
        store, lambda session: actions.viewed_recently(session, uid, actor=identity.name)
    ):
        return
    address = client_address(request)
    store.run(
        lambda session: actions.record_study_viewed(
            session, uid, actor=identity.name, actor_address=address, via=via
        )
    )


@router.get(
    "/studies/{study_instance_uid}",
    response_model=StudyDetail,
    responses=NOT_FOUND,
    summary="One study: result, per-image scores or skip reasons, stage timestamps, actions",
)
def get_study(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    identity: Radiologist,
    study_instance_uid: StudyUid,
) -> dict[str, Any]:
    detail = read_store(
        store,
        lambda session: worklist_reads.study_detail(
            session, study_instance_uid, phi=settings.worklist_phi
        ),
    )
    note_viewed(store, request, identity, study_instance_uid, "api")
    detail["thumbnail_url"] = None
    if detail.get("scored_sop_instance_uid"):
        path = read_store(
            store, lambda session: worklist_reads.scored_image_path(session, study_instance_uid)
        )
        if os.path.exists(path):  # rendered from the spool while the file is kept
            sop = quote(detail["scored_sop_instance_uid"], safe="")
            detail["thumbnail_url"] = (
                f"/api/studies/{quote(study_instance_uid, safe='')}/thumbnail.png?sop={sop}"
            )
    heatmap = _heatmap_png(settings, study_instance_uid, detail.get("model_version"))
    detail["heatmap_url"] = None
    if heatmap is not None:
        version = heatmap.stat().st_mtime_ns
        uid = quote(study_instance_uid, safe="")
        detail["heatmap_url"] = f"/api/studies/{uid}/heatmap.png?v={version}"
    return with_viewer_url(detail, settings)


def _heatmap_png(settings: Settings, study_uid: str, model_version: str | None) -> FilePath | None:
    """The worker's heatmap overlay of the study's current result (CXR_HEATMAPS), if any."""
    if not model_version:
        return None
    png = settings.heatmap_file(study_uid, model_version).with_suffix(".png")
    return png if png.is_file() else None


def _study_png(name: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """Route ``GET /api/studies/{study_instance_uid}/NAME.png``, answered with a PNG (404
    without one): the handler returns :func:`_png_response`."""
    return router.get(
        f"/studies/{{study_instance_uid}}/{name}.png",
        responses={**NOT_FOUND, 200: {"content": {"image/png": {}}}},
        response_class=Response,
        summary=summary,
    )


@_study_png(
    "heatmap", "The Grad-CAM heatmap over the scored image (AI triage, not for diagnostic use)"
)
def get_heatmap(
    store: StoreDep, settings: SettingsDep, _identity: Radiologist, study_instance_uid: StudyUid
) -> Response:
    entry = read_store(
        store, lambda session: worklist_reads.worklist_entry(session, study_instance_uid)
    )
    png = _heatmap_png(settings, study_instance_uid, entry.get("model_version"))
    if png is None:
        raise HTTPException(status_code=404, detail="no heatmap for this study")
    return _png_response(png.read_bytes())


@_study_png(
    "thumbnail", "A small PNG of the image that decided the study's score (never cached publicly)"
)
def get_thumbnail(
    store: StoreDep, _identity: Radiologist, study_instance_uid: StudyUid
) -> Response:
    from web.thumbnail import ThumbnailError, render_thumbnail

    path = read_store(
        store, lambda session: worklist_reads.scored_image_path(session, study_instance_uid)
    )
    with http_errors((ThumbnailError, 404)):
        png = render_thumbnail(path)
    return _png_response(png)


def _png_response(png: bytes) -> Response:
    """A PNG of a patient's image: kept by no cache, shared or private."""
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, no-store, max-age=0"}
    )


def _study_action(name: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """Route ``POST /api/studies/{study_instance_uid}/NAME``, answered with the study's entry."""
    return router.post(
        f"/studies/{{study_instance_uid}}/{name}",
        response_model=WorklistEntry,
        responses=NOT_FOUND,
        summary=summary,
    )


def _act(
    request: Request,
    identity: Identity,
    uid: str,
    action: Callable[..., actions.ActionResult],
    body: BaseModel | None = None,
) -> dict[str, Any]:
    """Run ``action(session, uid, actor=..., actor_address=..., **fields)``; the study after it.

    ``fields`` are the request ``body``'s fields, which are named as the action's arguments. A
    refused action (a bad value, a state it cannot leave) is answered 422 with its reason.
    """
    store = get_store(request)
    settings = get_settings(request)
    address = client_address(request)
    fields = body.model_dump() if body is not None else {}

    def work(session: Session) -> dict[str, Any]:
        with http_errors(((ValueError, TypeError), 422)):
            action(session, uid, actor=identity.name, actor_address=address, **fields)
        entry = worklist_reads.worklist_entry(session, uid, phi=settings.worklist_phi)
        return with_viewer_url(entry, settings)

    return store.run(work)


@_study_action("acknowledge", "Acknowledge a study (the first acknowledgement stands)")
def acknowledge(
    request: Request, identity: Radiologist, study_instance_uid: StudyUid
) -> dict[str, Any]:
    return _act(request, identity, study_instance_uid, actions.acknowledge)


@_study_action(
    "override",
    "Set a study's priority (upwards or downwards) with a reason; triage never changes it",
)
def override(
    request: Request, identity: Radiologist, study_instance_uid: StudyUid, body: OverrideIn
) -> dict[str, Any]:
    return _act(request, identity, study_instance_uid, actions.override, body)


@_study_action("override/clear", "Hand a study's priority back to the model's flag, with a reason")
def clear_override(
    request: Request, identity: Radiologist, study_instance_uid: StudyUid, body: ClearOverrideIn
) -> dict[str, Any]:
    return _act(request, identity, study_instance_uid, actions.clear_override, body)


@_study_action(
    "final-read", "Record the final read (pneumonia yes/no): the ground truth monitoring uses"
)
def final_read(
    request: Request, identity: Radiologist, study_instance_uid: StudyUid, body: FinalReadIn
) -> dict[str, Any]:
    return _act(request, identity, study_instance_uid, actions.record_final_read, body)
