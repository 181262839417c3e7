"""Who is calling, and may they: API tokens, the login cookie, roles, CSRF, refusals audited.

A request authenticates with ``Authorization: Bearer TOKEN`` (programs) or with the session
cookie that ``/login`` sets (the pages): the cookie holds a server-side session's random id
(:mod:`governance.web_sessions`), never the token, HttpOnly and SameSite=Strict, Secure when the
request came over HTTPS; the session ends when idle, at its absolute expiry, at logout or when
its token is revoked. A request that changes something with the cookie must also send the
``X-CSRF-Token`` header equal to the ``cxr_csrf`` cookie (double submit): another site can
neither read that cookie nor set that header.

No token or a bad one is 401, the wrong role 403; past ``CXR_WEB_AUTH_LIMIT`` refusals a minute
from one address, 429 (:mod:`web.throttle`). Refusals are audited as security alerts (DICOM
110113) with the route template, the method, the role, the token's prefix (never the token),
the client's address and a count: at most one event per address per minute.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from governance.db import Store
from governance.tokens import Identity, Refusal, authenticate, record_refusal
from governance.web_sessions import SessionPolicy, authenticate_session
from web.deps import StoreDep
from web.throttle import AuthThrottle, RefusalAudit

logger = logging.getLogger(__name__)

SESSION_COOKIE = "cxr_session"
CSRF_COOKIE = "cxr_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cxr-triage"'}

NO_TOKEN = (
    "authentication required: send 'Authorization: Bearer TOKEN' or log in at /login "
    "(tokens come from `cxr-triage token create`)"
)
BAD_TOKEN = "token not accepted (unknown or revoked); log in again or ask an admin for a token"
BAD_SESSION = "your sign-in has ended (expired, logged out or revoked); log in again at /login"
TOO_MANY = "too many refused requests from this address; try again in {seconds} s"
CSRF_MISSING = "missing or wrong X-CSRF-Token header for a cookie-authenticated change"


def safe_next(value: str | None) -> str:
    """A local path to go to after logging in; anything else (another site) becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def login_url(path: str) -> str:
    """The login page that returns to ``path`` afterwards."""
    return f"/login?{urlencode({'next': path})}"


def client_address(request: Request) -> str | None:
    """The peer's address (the socket's: proxy headers are not trusted)."""
    return request.client.host if request.client else None


def route_template(request: Request) -> str:
    """The matched route's template (``/api/studies/{study_instance_uid}``), else the path."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or request.url.path


def presented_token(request: Request) -> tuple[str | None, str]:
    """The token a request carries and how: ``(token, "bearer"|"cookie"|"none"|"malformed")``."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return None, "malformed"
        return value, "bearer"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, "cookie"
    return None, "none"


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """Whether ``submitted`` matches the request's CSRF cookie (constant-time)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def refuse(
    store: Store,
    request: Request,
    status_code: int,
    message: str,
    *,
    reason: str,
    token_prefix: str | None,
    roles: tuple[str, ...],
    identity: Identity | None = None,
    name: str | None = None,
    method: str | None = None,
    throttle: bool = False,
) -> HTTPException:
    """Audit a refusal (in aggregate) and return the HTTPException to raise.

    ``identity`` is the caller when the token was valid (wrong role, CSRF); ``name`` the token's
    name when it is known but not valid (revoked). With ``throttle`` the refusal counts towards
    the address's limit, and past it the answer is 429 instead of ``status_code``.
    """
    route = route_template(request)
    address = client_address(request)
    headers = BEARER_CHALLENGE if status_code == 401 else None
    if throttle:
        limiter: AuthThrottle = request.app.state.auth_throttle
        if limiter.hit(address):
            seconds = limiter.retry_after(address)
            status_code, message = 429, TOO_MANY.format(seconds=seconds)
            reason = f"rate limited: {reason}"
            headers = {"Retry-After": str(seconds)}
    audited = audit_refusal(
        store,
        request,
        Refusal(
            reason=reason,
            route=route,
            method=method or request.method,
            token_prefix=token_prefix,
            actor=identity.name if identity else name,
            role=identity.role if identity else None,
            required=roles,
        ),
    )
    # Logged like the audit: once a minute per address, the rest only at debug level.
    logger.log(
        logging.WARNING if audited else logging.DEBUG,
        "refused %s %s from %s: %s (token %s)",
        request.method,
        route,
        address,
        reason,
        f"{token_prefix}..." if token_prefix else "none",
    )
    return HTTPException(status_code=status_code, detail=message, headers=headers)


def audit_refusal(store: Store, request: Request, refusal: Refusal) -> int:
    """Audit a refusal unless this address had one audited in the last minute (then it is
    counted into the next event), so a flood adds at most one row a minute per address.

    Returns how many refusals the event written stands for (0: none written now).
    """
    address = client_address(request)
    aggregate: RefusalAudit = request.app.state.refusal_audit
    count = aggregate.note(address, refusal)
    if not count:
        return 0
    try:
        store.run(
            lambda session: record_refusal(session, refusal, actor_address=address, count=count),
            attempts=3,  # the request fails anyway when the store is down: answer it soon
        )
    except Exception:
        aggregate.restore(address, count, refusal)  # counted into the next event instead
        raise
    return count


def flush_refusals(store: Store, aggregate: RefusalAudit) -> int:
    """Audit the refusals ``aggregate`` still holds back (the web is stopping): one event per
    address, naming the latest refusal and counting all. Returns how many refusals; a store
    that is down loses them, with a log line saying how many."""
    held = aggregate.drain()
    if not held:
        return 0

    def work(session: Session) -> None:
        for address, refusal, count in held:
            record_refusal(session, refusal, actor_address=address, count=count)

    total = sum(count for _, _, count in held)
    try:
        store.run(work, attempts=3)
    except Exception:
        logger.exception("could not audit %d held-back refusal(s) at shutdown", total)
        return 0
    return total


def session_policy(request: Request) -> SessionPolicy:
    """The application's web session lifetimes."""
    policy: SessionPolicy = request.app.state.session_policy
    return policy


def authorize(request: Request, store: Store, roles: tuple[str, ...]) -> Identity:
    """The identity of the request if its token is valid, in one of ``roles``, CSRF-safe.

    Parameters
    ----------
    roles
        Roles allowed; empty allows any authenticated role.

    Raises
    ------
    HTTPException
        401 without a valid token, 403 for another role or a cookie change without the CSRF
        header; each audited.
    """
    token, method = presented_token(request)
    if token is None:
        reason = "malformed authorization header" if method == "malformed" else "no token"
        raise refuse(
            store,
            request,
            401,
            NO_TOKEN,
            reason=reason,
            token_prefix=None,
            roles=roles,
            throttle=True,
        )
    if method == "cookie":
        check = authenticate_session(store, token, session_policy(request))
    else:
        check = authenticate(store, token, method=method, actor_address=client_address(request))
    identity = check.identity
    if identity is None:
        raise refuse(
            store,
            request,
            401,
            BAD_SESSION if method == "cookie" else BAD_TOKEN,
            reason=check.reason or "unknown token",
            token_prefix=check.token_prefix,
            roles=roles,
            name=check.name,
            throttle=True,
        )
    if (
        method == "cookie"
        and request.method not in SAFE_METHODS
        and not csrf_ok(request, request.headers.get(CSRF_HEADER))
    ):
        raise refuse(
            store,
            request,
            403,
            CSRF_MISSING,
            reason="csrf",
            token_prefix=identity.token_prefix,
            roles=roles,
            identity=identity,
        )
    if roles and identity.role not in roles:
        raise refuse(
            store,
            request,
            403,
            f"this needs the {' or '.join(roles)} role; {identity.name!r} is {identity.role}",
            reason="role",
            token_prefix=identity.token_prefix,
            roles=roles,
            identity=identity,
        )
    request.state.identity = identity
    return identity


# Declares the bearer scheme in the OpenAPI document; the header is read by authorize().
BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `cxr-triage token create` (or the /login session cookie).",
)


class RequireRole:
    """A FastAPI dependency: the caller's :class:`Identity`, in one of the given roles.

    ``RequireRole()`` with no role admits any authenticated caller.
    """

    def __init__(self, *roles: str) -> None:
        self.roles = tuple(roles)

    def __call__(
        self,
        request: Request,
        store: StoreDep,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER_SCHEME)],
    ) -> Identity:
        return authorize(request, store, self.roles)
