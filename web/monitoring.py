"""The admin's monitoring: ``GET /api/monitoring`` (JSON), ``/monitoring`` (the page) and the
recalibration decisions ``POST /api/recalibration/{id}/approve|reject``.

The page is a static shell drawn by ``static/monitoring.js`` from the JSON (inline SVG, no CDN).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from governance.errors import NotFound, TriageError
from governance.models import Role
from governance.monitoring.overview import overview
from governance.recalibration import decide
from governance.tokens import Identity
from web.auth import RequireRole, authorize, login_url
from web.deps import StoreDep, http_errors, read_store
from web.pages import error_page, render

router = APIRouter(tags=["monitoring"])
Admin = Annotated[Identity, Depends(RequireRole(Role.ADMIN))]


@router.get("/api/monitoring", summary="Drift, subgroups, concordance and recalibration jobs")
def get_monitoring(request: Request, store: StoreDep, _identity: Admin) -> dict[str, Any]:
    minimum: int = request.app.state.subgroup_min_studies
    return read_store(store, lambda s: overview(s, subgroup_min=minimum))


@router.post(
    "/api/recalibration/{job_id}/{decision}",
    summary="Approve (a new policy version for new studies) or reject a candidate; audited",
)
def decide_job(
    store: StoreDep,
    identity: Admin,
    job_id: Annotated[int, Path(ge=1)],
    decision: Annotated[str, Path(pattern="^(approve|reject)$")],
    reason: Annotated[str, Body(embed=True, min_length=1, max_length=2000)],
) -> dict[str, Any]:
    def work(session):  # type: ignore[no-untyped-def]
        job = decide(
            session, job_id, approve=decision == "approve", actor=identity.name, reason=reason
        )
        return {"id": job.id, "state": job.state, "new_policy_id": job.new_policy_id}

    with http_errors((NotFound, 404), (TriageError, 409)):
        decided: dict[str, Any] = store.run(work)
    return decided


@router.get("/monitoring", response_class=HTMLResponse, include_in_schema=False)
def monitoring_page(request: Request, store: StoreDep) -> Response:
    try:
        authorize(request, store, (Role.ADMIN,))
    except HTTPException as exc:
        if exc.status_code == 401:
            return RedirectResponse(login_url(request.url.path), status_code=303)
        return error_page(exc.status_code, str(exc.detail))
    return render("monitoring.html", title="Monitoring")
