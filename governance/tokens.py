"""API tokens: who may use the web API, in which role.

A token is 32 random bytes (URL-safe text after a ``cxr_`` marker that secret scanners can
match), shown once when it is created and stored only as its SHA-256 with a short prefix that
people and the audit trail can name it by. Authenticating a token is a read; ``last_used_at`` is
written at most once a minute per token, and a successful authentication is audited (DICOM
110114) when a token is used again after an hour's quiet, so a page that refreshes every few
seconds neither writes on every request nor floods the audit trail. Refusals are audited by the
caller, which knows the route (:func:`record_refusal`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from governance import audit
from governance.db import Store
from governance.errors import NotFound, TriageError
from governance.models import ApiToken, Role, utcnow

logger = logging.getLogger(__name__)

TOKEN_MARKER = "cxr_"
TOKEN_BYTES = 32
PREFIX_LENGTH = 12  # the marker and 8 random characters: names a token, reveals nothing useful
TOUCH_INTERVAL = dt.timedelta(minutes=1)
AUTH_AUDIT_IDLE = dt.timedelta(hours=1)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@ -]{0,127}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token belongs to: the name it was created with, its role and its prefix."""

    name: str
    role: str
    token_prefix: str

    @classmethod
    def of(cls, row: ApiToken) -> Identity:
        return cls(row.name, row.role, row.token_prefix)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The outcome of looking a presented token up.

    ``identity`` is set when the token is valid; otherwise ``reason`` says why not
    (``unknown token``, ``revoked token``) and ``identity`` is None. ``name`` is the token's
    name when the store knows it (a valid or a revoked token).
    """

    identity: Identity | None
    reason: str | None
    token_prefix: str
    name: str | None = None


def hash_token(token: str) -> str:
    """SHA-256 of a token's text, hex: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_prefix(token: str) -> str:
    """The first characters of a presented token, safe to record (never the whole token)."""
    return token[:PREFIX_LENGTH]


def _check_name(name: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"name must be 1-128 characters (letters, digits, . _ @ - and spaces), got {name!r}"
        )
    return name


def _check_role(role: str) -> str:
    if role not in Role.ALL:
        raise ValueError(f"role must be one of {', '.join(Role.ALL)}, got {role!r}")
    return role


def _audit(
    session: Session,
    action: audit.Action,
    token: Identity,
    actor: str,
    actor_address: str | None,
    **detail: object,
) -> None:
    """Audit something done to or with a token, named by its name, role and prefix."""
    audit.record(
        session,
        "api_token",
        token.name,
        actor=actor,
        actor_address=actor_address,
        action=action,
        detail={**detail, "role": token.role, "token_prefix": token.token_prefix},
    )


def create_token(
    session: Session,
    *,
    name: str,
    role: str,
    created_by: str,
    actor_address: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for ``name`` in ``role``; return its row and the token text.

    The text is returned here and nowhere else: only its SHA-256 is stored.

    Parameters
    ----------
    name
        Who the token is for (a person or a client program); unique, also among revoked tokens.
    role
        One of :class:`governance.models.Role` (radiologist, admin, auditor).
    created_by
        Who created it (``cli:USER`` or an admin's token name); recorded in the audit.

    Raises
    ------
    ValueError
        ``name`` or ``role`` is not acceptable.
    TriageError
        A token with this name exists (revoked or not).
    """
    name = _check_name(name)
    role = _check_role(role)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)):
        raise TriageError(f"a token named {name!r} exists already; choose another name")
    text = TOKEN_MARKER + secrets.token_urlsafe(TOKEN_BYTES)
    row = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(text),
        token_prefix=token_prefix(text),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    _audit(session, audit.Action.TOKEN_CREATED, Identity.of(row), created_by, actor_address)
    logger.info("created %s token %r (%s...)", role, name, row.token_prefix)
    return row, text


def revoke_token(
    session: Session, name: str, *, actor: str, actor_address: str | None = None
) -> ApiToken:
    """Revoke the token called ``name``: it is refused from now on.

    Raises
    ------
    NotFound
        No token has this name.
    TriageError
        The token is revoked already.
    """
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFound(f"no token named {name!r} (see: cxr-triage token list)")
    if row.revoked_at is not None:
        raise TriageError(f"token {name!r} was revoked at {row.revoked_at:%Y-%m-%d %H:%M}Z")
    row.revoked_at = utcnow()
    # Imported here: web_sessions builds on this module's Identity and TokenCheck.
    from governance.web_sessions import end_token_sessions

    sessions = end_token_sessions(session, row.id, reason="token revoked", now=row.revoked_at)
    _audit(
        session,
        audit.Action.TOKEN_REVOKED,
        Identity.of(row),
        actor,
        actor_address,
        sessions_ended=sessions,
    )
    logger.info("revoked token %r (%s...)", name, row.token_prefix)
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def check_token(session: Session, token: str) -> TokenCheck:
    """Look a presented token up (a read; nothing is written or audited).

    The stored hash is compared in constant time, so response times say nothing about how
    close a guess was.
    """
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return TokenCheck(None, "unknown token", token_prefix(token))
    if row.revoked_at is not None:
        return TokenCheck(None, "revoked token", row.token_prefix, row.name)
    return TokenCheck(Identity.of(row), None, row.token_prefix, row.name)


def _touch(
    session: Session,
    identity: Identity,
    now: dt.datetime,
    method: str,
    actor_address: str | None,
) -> None:
    # Only the request that moves last_used_at audits, so concurrent requests record one event.
    stale = now - TOUCH_INTERVAL
    idle = now - AUTH_AUDIT_IDLE
    previous = session.scalar(select(ApiToken.last_used_at).where(ApiToken.name == identity.name))
    result = session.execute(
        update(ApiToken)
        .where(
            ApiToken.name == identity.name,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    moved = getattr(result, "rowcount", 0)
    if moved and (previous is None or previous < idle):
        record_authenticated(session, identity, method=method, actor_address=actor_address)


def record_authenticated(
    session: Session, identity: Identity, *, method: str, actor_address: str | None
) -> None:
    """Audit a successful authentication (DICOM 110114 User Authentication)."""
    _audit(
        session,
        audit.Action.USER_AUTHENTICATED,
        identity,
        identity.name,
        actor_address,
        method=method,
    )


def record_logged_out(session: Session, identity: Identity, *, actor_address: str | None) -> None:
    """Audit a sign-out of the worklist (DICOM 110123 Logout)."""
    _audit(session, audit.Action.USER_LOGGED_OUT, identity, identity.name, actor_address)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request as it is audited (DICOM 110113 Security Alert).

    Attributes
    ----------
    reason
        Why: ``no token``, ``unknown token``, ``revoked token``, ``role``, ``csrf``.
    route
        The route template (``/api/studies/{study_instance_uid}``), not the path.
    method
        The HTTP method.
    token_prefix
        The prefix of the token presented (never the token), or None when there was none.
    actor
        The token's name when it is known, else None (audited as ``anonymous``).
    role
        The token's role when it was valid.
    required
        The roles the route needs.
    """

    reason: str
    route: str
    method: str
    token_prefix: str | None
    actor: str | None = None
    role: str | None = None
    required: tuple[str, ...] = ()


def record_refusal(
    session: Session, refusal: Refusal, *, actor_address: str | None = None, count: int = 1
) -> None:
    """Audit a refused request: no token, a bad one, wrong role.

    ``count`` is how many refusals from this address the event stands for (refusals are
    audited at most once a minute per address; the detail names the latest).
    """
    audit.record(
        session,
        "route",
        refusal.route[:128],
        actor=refusal.actor or "anonymous",
        actor_address=actor_address,
        action=audit.Action.TOKEN_REFUSED,
        outcome=audit.Outcome.REFUSED,
        detail={
            "reason": refusal.reason,
            "method": refusal.method,
            "route": refusal.route,
            "role": refusal.role,
            "required_roles": list(refusal.required),
            "token_prefix": refusal.token_prefix or "none",
            "count": count,
        },
    )


def authenticate(
    store: Store,
    token: str,
    *,
    method: str = "bearer",
    actor_address: str | None = None,
    now: dt.datetime | None = None,
) -> TokenCheck:
    """Check a presented token; note its use (at most once a minute) and audit a new session.

    Parameters
    ----------
    store
        The store; read on every call, written only when ``last_used_at`` is a minute old.
    token
        The token text as presented (``Authorization: Bearer`` or the session cookie).
    method
        How it was presented (``bearer``, ``cookie``), kept in the audit detail.

    Returns
    -------
    TokenCheck
        ``identity`` set when valid; refusals are for the caller to audit with the route.
    """
    when = now or utcnow()
    with store.read() as session:
        check = check_token(session, token)
        last_used = None
        if check.identity is not None:
            last_used = session.scalar(
                select(ApiToken.last_used_at).where(ApiToken.name == check.identity.name)
            )
    identity = check.identity
    if identity is not None and (last_used is None or last_used < when - TOUCH_INTERVAL):
        store.run(lambda session: _touch(session, identity, when, method, actor_address))
    return check
