"""API tokens on SQLite and PostgreSQL: stored hashed, authenticated cheaply, revoked, audited."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select, text, update

from governance.db import Store
from governance.errors import NotFound, TriageError
from governance.models import ApiToken, utcnow
from governance.tokens import authenticate, create_token, list_tokens, revoke_token
from tests.inspect_store import audit_events as _events


def _row(store: Store, name: str) -> ApiToken:
    with store.read() as session:
        row = session.scalars(select(ApiToken).where(ApiToken.name == name)).one()
        session.expunge(row)
        return row


def test_a_token_is_shown_once_and_stored_only_as_its_hash(store: Store) -> None:
    row, token = store.run(
        lambda s: create_token(s, name="dr who", role="radiologist", created_by="cli:root")
    )
    assert token.startswith("cxr_") and len(token) == 4 + 43  # 32 random bytes, URL-safe
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.token_prefix == token[:12]
    # Nothing in the table holds the token itself.
    with store.read() as session:
        dump = str(session.execute(text("SELECT * FROM api_tokens")).all())
    assert token not in dump and token[12:] not in dump
    created = _events(store, "token_created")
    assert [(e.actor, e.object_uid, e.event_code) for e in created] == [
        ("cli:root", "dr who", "110113")
    ]
    assert created[0].detail == {"role": "radiologist", "token_prefix": token[:12]}
    _, other = store.run(lambda s: create_token(s, name="b", role="auditor", created_by="x"))
    assert other != token


@pytest.mark.parametrize(
    ("name", "role", "error"),
    [("ok", "superuser", ValueError), ("", "admin", ValueError), ("a\nb", "admin", ValueError)],
)
def test_bad_names_and_roles_are_refused(store: Store, name: str, role: str, error: type) -> None:
    with pytest.raises(error, match="role|name"):
        store.run(lambda s: create_token(s, name=name, role=role, created_by="x"))


def test_names_are_unique_even_after_revoking(store: Store) -> None:
    store.run(lambda s: create_token(s, name="x", role="admin", created_by="y"))
    store.run(lambda s: revoke_token(s, "x", actor="y"))
    with pytest.raises(TriageError, match="exists already"):
        store.run(lambda s: create_token(s, name="x", role="admin", created_by="y"))


def test_authenticate_valid_unknown_and_revoked(store: Store) -> None:
    _, token = store.run(lambda s: create_token(s, name="a", role="admin", created_by="y"))
    check = authenticate(store, token, actor_address="10.1.2.3")
    assert check.identity is not None
    assert (check.identity.name, check.identity.role) == ("a", "admin")
    assert _row(store, "a").last_used_at is not None
    unknown = authenticate(store, "cxr_" + "A" * 43)
    assert unknown.identity is None and unknown.reason == "unknown token"
    assert unknown.token_prefix == "cxr_AAAAAAAA" and unknown.name is None
    store.run(lambda s: revoke_token(s, "a", actor="y"))
    revoked = authenticate(store, token)
    assert revoked.identity is None and revoked.reason == "revoked token"
    assert revoked.name == "a"
    assert [e.actor for e in _events(store, "token_revoked")] == ["y"]


def test_use_is_noted_at_most_once_a_minute_and_audited_after_an_hour_idle(store: Store) -> None:
    _, token = store.run(lambda s: create_token(s, name="r", role="radiologist", created_by="y"))
    t0 = utcnow()
    authenticate(store, token, now=t0, actor_address="10.0.0.1")
    first = _row(store, "r").last_used_at
    authenticate(store, token, now=t0 + dt.timedelta(seconds=30))
    assert _row(store, "r").last_used_at == first  # no write within the minute
    authenticate(store, token, now=t0 + dt.timedelta(minutes=2))
    assert _row(store, "r").last_used_at == t0 + dt.timedelta(minutes=2)
    events = _events(store, "user_authenticated")
    assert len(events) == 1  # one session: the first use, not every request
    assert events[0].event_code == "110114" and events[0].actor_address == "10.0.0.1"
    assert events[0].detail == {
        "method": "bearer",
        "role": "radiologist",
        "token_prefix": token[:12],
    }
    authenticate(store, token, now=t0 + dt.timedelta(hours=2))
    assert len(_events(store, "user_authenticated")) == 2  # back after an hour's quiet


def test_list_and_revoke(store: Store) -> None:
    def make(name: str) -> None:
        store.run(lambda s: create_token(s, name=name, role="auditor", created_by="y"))

    make("one")
    make("two")
    store.run(lambda s: revoke_token(s, "one", actor="y"))
    with store.read() as session:
        rows = [(t.name, t.revoked_at is not None) for t in list_tokens(session)]
    assert rows == [("one", True), ("two", False)]
    with pytest.raises(TriageError, match="was revoked"):
        store.run(lambda s: revoke_token(s, "one", actor="y"))
    with pytest.raises(NotFound):
        store.run(lambda s: revoke_token(s, "three", actor="y"))


def test_an_old_last_used_time_is_moved_by_one_request_only(store: Store) -> None:
    _, token = store.run(lambda s: create_token(s, name="c", role="auditor", created_by="y"))
    old = utcnow() - dt.timedelta(days=1)
    store.run(lambda s: s.execute(update(ApiToken).values(last_used_at=old)))
    now = utcnow()
    for _ in range(3):
        authenticate(store, token, now=now)
    assert len(_events(store, "user_authenticated")) == 1
