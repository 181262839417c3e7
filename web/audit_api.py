"""The auditor role's JSON API: query the audit trail and verify its hash chain.

Each use of the audit trail is itself audited (DICOM 110101 Audit Log Used) with the filters,
the number of events returned or the verification's outcome.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from governance import audit
from governance.audit.query import AuditQuery, AuditRecord, parse_time, query_events
from governance.audit.verify import verify_chain
from governance.audit_key import read_anchors
from governance.db import Store
from governance.errors import ConfigError
from governance.models import Role
from governance.tokens import Identity
from web.auth import RequireRole, client_address
from web.deps import StoreDep, http_errors, read_store
from web.schemas import REFUSALS, AuditEventOut, AuditVerifyOut

logger = logging.getLogger(__name__)

MAX_LIMIT = 5000


router = APIRouter(prefix="/api/audit", tags=["auditor"], responses=REFUSALS)

Auditor = Annotated[Identity, Depends(RequireRole(Role.AUDITOR))]


def _note_use(
    store: Store,
    identity: Identity,
    request: Request,
    operation: str,
    detail: dict[str, Any],
    outcome: str = audit.Outcome.SUCCESS,
    tampered: bool = False,
) -> None:
    address = client_address(request)

    def work(session: Session) -> None:
        audit.record_audit_use(
            session,
            actor=identity.name,
            operation=operation,
            detail=detail,
            actor_address=address,
            outcome=outcome,
        )
        if tampered:
            audit.record(
                session,
                "audit_trail",
                actor=identity.name,
                actor_address=address,
                action=audit.Action.AUDIT_TAMPER_DETECTED,
                outcome=audit.Outcome.FAILURE,
                detail=detail,
            )

    store.run(work)


@router.get(
    "",
    response_model=list[AuditEventOut],
    summary="Query the audit trail (newest first): by time, actor, action, code, object, outcome",
)
def get_audit(
    request: Request,
    store: StoreDep,
    identity: Auditor,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most events returned.")] = 100,
    since: Annotated[
        str | None,
        Query(description="From this time: ISO 8601 (2026-11-25T08:00Z) or an age (24h, 7d)."),
    ] = None,
    until: Annotated[str | None, Query(description="Before this time (same forms).")] = None,
    actor: Annotated[
        str | None, Query(description="Only this actor; * is a wildcard (cli:*).")
    ] = None,
    action: Annotated[
        list[str] | None, Query(description="Only these actions; repeatable.")
    ] = None,
    event_code: Annotated[
        list[str] | None, Query(description="Only these DICOM event codes (110113); repeatable.")
    ] = None,
    object_uid: Annotated[
        str | None,
        Query(description="Only events about this object (a Study Instance UID, a version)."),
    ] = None,
    outcome: Annotated[
        str | None, Query(description="Only this outcome: success, refused or failure.")
    ] = None,
    before_id: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="Paging: only events older than this id."),
    ] = None,
) -> list[AuditRecord]:
    with http_errors((ValueError, 422)):
        query = AuditQuery(
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            actor=actor,
            actions=tuple(action or ()),
            event_codes=tuple(event_code or ()),
            object_uid=object_uid,
            outcome=outcome,
            before_id=before_id,
            limit=limit,
            newest_first=True,
        )
    events = read_store(store, lambda session: query_events(session, query))
    _note_use(
        store, identity, request, "query", {"filters": query.as_detail(), "returned": len(events)}
    )
    return events


@router.get(
    "/verify",
    response_model=AuditVerifyOut,
    summary="Walk the hash chain: is the audit trail intact, and where was it altered",
)
def get_verify(
    request: Request,
    store: StoreDep,
    identity: Auditor,
    expect_head: Annotated[
        str | None,
        Query(
            description="An anchor kept outside the database (HASH or ID:HASH, from an earlier "
            "verification): catches deleted newest rows and rewritten trails."
        ),
    ] = None,
    anchors: Annotated[
        bool,
        Query(
            description="Also check every head anchored in this server's anchor file "
            "(CXR_AUDIT_ANCHOR_FILE)."
        ),
    ] = False,
) -> dict[str, Any]:
    anchored: list[tuple[int, str]] = []
    if anchors:
        path = request.app.state.settings.anchor_path
        with http_errors((ConfigError, 409)):
            anchored = read_anchors(path) if path.exists() else []
    with http_errors((ValueError, 422)):
        result = read_store(
            store,
            lambda session: verify_chain(session, expect_head=expect_head, anchors=anchored),
        )
    summary = result.to_dict()
    _note_use(
        store,
        identity,
        request,
        "verify",
        {k: summary[k] for k in ("intact", "events", "anchor", "problem_count", "first_bad_id")},
        outcome=audit.Outcome.SUCCESS if result.ok else audit.Outcome.FAILURE,
        tampered=not result.ok,
    )
    if not result.ok:
        logger.error(
            "audit trail verification failed: %d problem(s), first at event %s",
            result.problem_count,
            summary["first_bad_id"],
        )
    return summary
