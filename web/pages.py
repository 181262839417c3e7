"""The HTML pages: the radiologist worklist at ``/`` and a study page at ``/studies/{uid}``.

The pages are static files of this package with a few values filled in on the server (the
banner that says which model is active and whether it is clinical, the study UID); the tables
are drawn and refreshed by vanilla JavaScript from the JSON API. No CDN, no framework.

The worklist page is a shell that holds no study data, so it loads without a token; its script
goes to ``/login`` when the API answers 401. The study page needs the radiologist role (a
person who is not logged in is sent to ``/login`` and back), and opening it is audited.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from pathlib import Path
from string import Template
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.models import Role, Study
from governance.registry import active_model
from web.auth import authorize, login_url
from web.deps import StoreDep, read_store

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


# A line that stands for another file of ``web/static``: the head every full page shares.
INCLUDE = re.compile(r'^<!--#include file="([\w.-]+)" -->\n', re.MULTILINE)


@functools.cache
def _template(name: str) -> Template:
    """The template ``name`` of ``web/static``, each of its include lines replaced by that file.

    ``head.html`` opens the document and its ``<head>`` (charset, viewport, ``$title``,
    stylesheet, icon); the page goes on with its scripts and ``</head>``.
    """
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return Template(
        INCLUDE.sub(lambda match: (STATIC_DIR / match[1]).read_text(encoding="utf-8"), text)
    )


def model_banner(model: dict[str, Any] | None) -> str:
    """HTML of the part of the banner that names the active model (escaped)."""
    if model is None:
        return (
            '<span class="model-status none">No active model: studies are received but '
            "not triaged.</span>"
        )
    version = html.escape(model["version"])
    if model["clinical"]:
        return f'<span class="model-status clinical">Active model: {version}</span>'
    return (
        f'<span class="model-status nonclinical">Active model: {version} '
        "&mdash; <strong>NON-CLINICAL</strong> (demo / research), not validated for "
        "clinical use</span>"
    )


def _active(session: Session) -> dict[str, Any] | None:
    model = active_model(session)
    return None if model is None else {"version": model.version, "clinical": model.clinical}


def render(name: str, status_code: int = 200, **values: str) -> HTMLResponse:
    """Fill a page template of ``web/static`` with already escaped HTML ``values``."""
    return HTMLResponse(_template(name).substitute(values), status_code=status_code)


def render_page(
    name: str, *, title: str, heading: str, model_banner: str, **values: str
) -> HTMLResponse:
    """A signed-in page: its own part ``name`` in the frame such pages share (``page.html``).

    The frame holds the scripts (``name``'s ``.js`` last), the user bar and the intended-use
    banner. ``title``, ``heading`` and ``values`` are already escaped HTML.
    """
    return render(
        "page.html",
        title=title,
        heading=heading,
        script=name.removesuffix(".html") + ".js",
        model_banner=model_banner,
        content=_template(name).substitute(values),
    )


def error_page(status_code: int, message: str) -> HTMLResponse:
    """A plain page for a person (the JSON API answers JSON instead)."""
    return render(
        "error.html", status_code=status_code, message=html.escape(message), title=str(status_code)
    )


@router.get("/", response_class=HTMLResponse)
def worklist_page(store: StoreDep) -> HTMLResponse:
    return render_page(
        "worklist.html",
        title="Worklist",
        heading="  <h1>CXR triage worklist</h1>",
        model_banner=model_banner(read_store(store, _active)),
    )


@router.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
def study_page(
    request: Request, store: StoreDep, study_instance_uid: Annotated[str, PathParam()]
) -> Response:
    from web.api import note_viewed  # the API module's audit of a viewing, shared

    try:
        identity = authorize(request, store, (Role.RADIOLOGIST,))
    except HTTPException as exc:
        if exc.status_code == 401:
            return RedirectResponse(login_url(request.url.path), status_code=303)
        return error_page(exc.status_code, str(exc.detail))

    def load(session: Session) -> tuple[bool, dict[str, Any] | None]:
        exists = session.scalar(
            select(Study.id).where(Study.study_instance_uid == study_instance_uid)
        )
        return exists is not None, _active(session)

    exists, model = read_store(store, load)
    if not exists:
        return error_page(404, f"No study {study_instance_uid} in the store.")
    note_viewed(store, request, identity, study_instance_uid, "page")
    uid = html.escape(study_instance_uid)
    return render_page(
        "study.html",
        title=f"Study {uid}",
        heading=f'  <p class="back"><a href="/">&larr; Worklist</a></p>\n'
        f'  <h1>Study <span class="uid">{uid}</span></h1>',
        model_banner=model_banner(model),
        uid=uid,
    )
