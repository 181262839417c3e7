"""Web logins as server-side sessions: the cookie holds a random id, never the API token.

A person logs in once with their API token; :func:`start_session` makes a session of 32 random
bytes of which the store keeps only the SHA-256. A session ends when it has been idle longer
than the site allows, at its absolute expiry whatever the activity, at logout
(:func:`end_session`), or when its token is revoked (:func:`end_token_sessions`, called by
:func:`governance.tokens.revoke_token`). ``last_seen_at`` is written at most once a minute, so a
page that refreshes every few seconds does not write on every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from governance.db import Store
from governance.models import ApiToken, WebSession, utcnow
from governance.tokens import Identity, TokenCheck

SESSION_MARKER = "cxs_"
SESSION_BYTES = 32
TOUCH_INTERVAL = dt.timedelta(minutes=1)
KEEP_EXPIRED = dt.timedelta(days=7)  # expired sessions are deleted a week later (at a login)
MAX_SESSION_TEXT = 128


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long a web session lasts: ``idle`` unused, ``absolute`` after it began."""

    idle: dt.timedelta
    absolute: dt.timedelta

    def __post_init__(self) -> None:
        if self.idle <= dt.timedelta(0) or self.absolute <= dt.timedelta(0):
            raise ValueError("idle and absolute must be positive")


def hash_session(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def start_session(
    session: Session,
    identity: Identity,
    policy: SessionPolicy,
    *,
    actor_address: str | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Open a session for a valid token's ``identity``; return the cookie's text (shown once)."""
    when = now or utcnow()
    token_id = session.scalar(select(ApiToken.id).where(ApiToken.name == identity.name))
    if token_id is None:
        raise ValueError(f"no token named {identity.name!r}")
    # Logins are rare: the place to keep the table from growing without bound.
    session.execute(
        delete(WebSession)
        .where(WebSession.expires_at < when - KEEP_EXPIRED)
        .execution_options(synchronize_session=False)
    )
    text = SESSION_MARKER + secrets.token_urlsafe(SESSION_BYTES)
    session.add(
        WebSession(
            session_hash=hash_session(text),
            token_id=token_id,
            actor_address=(actor_address or "")[:64] or None,
            created_at=when,
            last_seen_at=when,
            expires_at=when + policy.absolute,
        )
    )
    session.flush()
    return text


def _lookup(session: Session, text: str) -> tuple[WebSession, ApiToken] | None:
    if not text.startswith(SESSION_MARKER) or len(text) > MAX_SESSION_TEXT:
        return None
    row = session.execute(
        select(WebSession, ApiToken)
        .join(ApiToken, ApiToken.id == WebSession.token_id)
        .where(WebSession.session_hash == hash_session(text))
    ).first()
    return (row[0], row[1]) if row else None


def check_session(
    session: Session, text: str, policy: SessionPolicy, *, now: dt.datetime | None = None
) -> tuple[TokenCheck, WebSession | None]:
    """Look a session cookie up (a read): its token's identity, or why it is refused."""
    when = now or utcnow()
    found = _lookup(session, text)
    prefix = text[: len(SESSION_MARKER) + 4]
    if found is None:
        return TokenCheck(None, "unknown session", prefix), None
    web, token = found
    reason = None
    if token.revoked_at is not None:
        reason = "revoked token"
    elif web.ended_at is not None:
        reason = f"session ended ({web.ended_reason or 'logout'})"
    elif when >= web.expires_at:
        reason = "session expired"
    elif when - web.last_seen_at > policy.idle:
        reason = "session idle"
    if reason:
        return TokenCheck(None, reason, token.token_prefix, token.name), web
    identity = Identity(token.name, token.role, token.token_prefix)
    return TokenCheck(identity, None, token.token_prefix, token.name), web


def authenticate_session(
    store: Store, text: str, policy: SessionPolicy, *, now: dt.datetime | None = None
) -> TokenCheck:
    """Check a session cookie; note its use at most once a minute (keeps it from idling out)."""
    when = now or utcnow()
    with store.read() as session:
        check, web = check_session(session, text, policy, now=when)
        seen = (web.id, web.last_seen_at) if web is not None else None
    if check.identity is not None and seen is not None and when - seen[1] > TOUCH_INTERVAL:
        session_id = seen[0]

        def touch(session: Session) -> None:
            session.execute(
                update(WebSession)
                .where(WebSession.id == session_id, WebSession.last_seen_at < when)
                .values(last_seen_at=when)
                .execution_options(synchronize_session=False)
            )

        store.run(touch)
    return check


def end_session(
    session: Session, text: str, *, reason: str = "logout", now: dt.datetime | None = None
) -> Identity | None:
    """End the session of a cookie; its identity if it was open, else None."""
    found = _lookup(session, text)
    if found is None:
        return None
    web, token = found
    if web.ended_at is not None:
        return None
    web.ended_at = now or utcnow()
    web.ended_reason = reason[:32]
    return Identity(token.name, token.role, token.token_prefix)


def end_token_sessions(
    session: Session, token_id: int, *, reason: str, now: dt.datetime | None = None
) -> int:
    """End every open session of a token (it was revoked); how many were open."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.token_id == token_id, WebSession.ended_at.is_(None))
        .values(ended_at=now or utcnow(), ended_reason=reason[:32])
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
