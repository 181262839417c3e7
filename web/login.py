"""``/login`` and ``/logout``: a person pastes their API token once and gets a session cookie.

The cookie holds the random id of a server-side session (:mod:`governance.web_sessions`), never
the token (HttpOnly, SameSite=Strict, Secure over HTTPS); the session ends when idle
(``CXR_WEB_SESSION_IDLE_MINUTES``), at its absolute expiry (``CXR_WEB_SESSION_MAX_HOURS``), at
logout, or when its token is revoked. Login attempts count towards the address's limit
(``CXR_WEB_AUTH_LIMIT`` a minute, then 429) and refusals are audited in aggregate. The forms
carry a CSRF value that must match the ``cxr_csrf`` cookie (double submit), so another site
cannot log a user in or out.
"""

from __future__ import annotations

import html
import logging
import secrets
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from governance.db import Store
from governance.tokens import (
    Identity,
    Refusal,
    check_token,
    record_authenticated,
    record_logged_out,
)
from governance.web_sessions import end_session, start_session
from web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    TOO_MANY,
    audit_refusal,
    client_address,
    csrf_ok,
    safe_next,
    session_policy,
)
from web.deps import StoreDep, read_store
from web.pages import error_page, render
from web.throttle import AuthThrottle

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


MAX_FORM_BYTES = 8192


def _secure(request: Request) -> bool:
    # Behind a proxy that terminates TLS the request arrives as plain HTTP; the site says so.
    return request.url.scheme == "https" or bool(request.app.state.settings.web_secure_cookies)


def _login_page(
    request: Request, next_path: str, message: str = "", status_code: int = 200
) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    response = render(
        "login.html",
        status_code=status_code,
        title="Log in",
        csrf=html.escape(csrf),
        next=html.escape(next_path),
        message=notice,
    )
    response.headers["cache-control"] = "no-store"
    response.set_cookie(
        CSRF_COOKIE, csrf, httponly=False, samesite="strict", secure=_secure(request), path="/"
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request, next_path: Annotated[str | None, Query(alias="next")] = None
) -> HTMLResponse:
    return _login_page(request, safe_next(next_path))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if values}


def _refusal(
    store: Store, request: Request, reason: str, prefix: str | None, name: str | None = None
) -> None:
    address = client_address(request)
    path = request.url.path
    audited = audit_refusal(
        store,
        request,
        Refusal(reason=reason, route=path, method="POST", token_prefix=prefix, actor=name),
    )
    logger.log(
        logging.WARNING if audited else logging.DEBUG,
        "refused %s from %s: %s",
        path,
        address,
        reason,
    )


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, store: StoreDep) -> Response:
    limiter: AuthThrottle = request.app.state.auth_throttle
    address = client_address(request)
    if limiter.hit(address):
        # Refused before the form is read or the store asked: a flood costs neither.
        _refusal(store, request, "rate limited: login", None)
        seconds = limiter.retry_after(address)
        limited = _login_page(request, "/", TOO_MANY.format(seconds=seconds) + ".", status_code=429)
        limited.headers["retry-after"] = str(seconds)
        return limited
    form = await _form(request)
    next_path = safe_next(form.get("next"))
    if not csrf_ok(request, form.get("csrf")):
        _refusal(store, request, "csrf", None)
        return _login_page(
            request, next_path, "The form had expired; please try again.", status_code=403
        )
    token = form.get("token", "").strip()
    if not token:
        return _login_page(request, next_path, "Paste your API token.", status_code=401)
    check = read_store(store, lambda session: check_token(session, token))
    identity = check.identity
    if identity is None:
        _refusal(store, request, check.reason or "unknown token", check.token_prefix, check.name)
        return _login_page(
            request,
            next_path,
            "That token was not accepted (unknown or revoked).",
            status_code=401,
        )
    policy = session_policy(request)

    def open_session(session: Session) -> str:
        text = start_session(session, identity, policy, actor_address=address)
        record_authenticated(session, identity, method="login", actor_address=address)
        return text

    session_text = store.run(open_session)
    logger.info("%s logged in as %s from %s", identity.name, identity.role, address)
    response = RedirectResponse(next_path, status_code=303)
    secure = _secure(request)
    response.set_cookie(
        SESSION_COOKIE,
        session_text,
        max_age=int(policy.absolute.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    # A new CSRF value for the new session.
    response.set_cookie(
        CSRF_COOKIE, secrets.token_urlsafe(24), httponly=False, samesite="strict", secure=secure
    )
    return response


def _logout(store: Store, session_text: str, address: str | None) -> Identity | None:
    def work(session: Session) -> Identity | None:
        identity = end_session(session, session_text, reason="logout")
        if identity is not None:
            record_logged_out(session, identity, actor_address=address)
        return identity

    return store.run(work)


@router.post("/logout")
async def logout(request: Request, store: StoreDep) -> Response:
    form = await _form(request)
    if not csrf_ok(request, form.get("csrf")):
        _refusal(store, request, "csrf", None)
        return error_page(403, "The sign-out form had expired; reload the page and try again.")
    session_text = request.cookies.get(SESSION_COOKIE)
    if session_text:
        _logout(store, session_text, client_address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, samesite="strict")
    return response
