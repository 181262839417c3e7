"""The keyed audit chain and its anchors: a trail rewritten and re-hashed without the key, or
rewritten wholesale, is found (SQLite and PostgreSQL)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from governance import audit
from governance.audit.verify import verify_chain
from governance.audit_key import AnchorFile, load_audit_key, read_anchors
from governance.db import Store, create_store_engine
from governance.errors import ConfigError
from governance.models import HMAC_SCHEME, AuditEvent
from tests.governance import tampering

KEY = b"k" * 32


def _keyed_store(url: str, anchor_file: Path, key: bytes = KEY) -> Store:
    return Store(create_store_engine(url), audit_key=key, anchors=AnchorFile(anchor_file, 0))


def _write(store: Store, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        store.run(partial(audit.record, actor="pytest", action=audit.Action.QUERY, detail={"n": n}))


def test_new_rows_are_keyed_and_old_unkeyed_rows_still_verify(
    database_url: str, tmp_path: Path
) -> None:
    plain = Store(create_store_engine(database_url))
    _write(plain, 3)  # written before the site had a key
    plain.dispose()
    store = _keyed_store(database_url, tmp_path / "anchors.log")
    _write(store, 4, start=3)
    with store.read() as session:
        schemes = [e.hash_scheme for e in session.query(AuditEvent).order_by(AuditEvent.id)]
        result = verify_chain(session)
    assert schemes == [None] * 3 + [HMAC_SCHEME] * 4
    assert result.ok and result.keyed_events == 4, result.problems
    # Without the key keyed rows cannot be checked, and verify says so.
    with Store(create_store_engine(database_url)).read() as session:
        blind = verify_chain(session)
    assert [p.kind for p in blind.problems] == ["key"]
    store.dispose()


def test_a_rewrite_rehashed_without_the_key_is_found(database_url: str, tmp_path: Path) -> None:
    store = _keyed_store(database_url, tmp_path / "anchors.log")
    _write(store, 6)
    # A guessed key, then plain SHA-256 with the rows marked unkeyed: both are found.
    tampering.rewrite_from(database_url, 3, key=b"g" * 32, detail={"n": 99})
    with store.read() as session:
        guessed = verify_chain(session)
    assert not guessed.ok and guessed.first_problem is not None
    assert (guessed.first_problem.event_id, guessed.first_problem.kind) == (3, "edited")
    tampering.rewrite_from(database_url, 3, unkeyed=True, detail={"n": 98})
    with store.read() as session:
        downgraded = verify_chain(session)
    assert downgraded.first_problem is not None
    assert (downgraded.first_problem.event_id, downgraded.first_problem.kind) == (3, "unkeyed")
    store.dispose()


def test_the_anchor_file_catches_a_wholesale_rewrite_and_deleted_newest_rows(
    database_url: str, tmp_path: Path
) -> None:
    anchor_file = tmp_path / "audit" / "anchors.log"
    store = _keyed_store(database_url, anchor_file)
    _write(store, 5)
    anchors = read_anchors(anchor_file)
    assert [a[0] for a in anchors] == [1, 2, 3, 4, 5]  # interval 0: after every write
    with store.read() as session:
        assert verify_chain(session, anchors=anchors).ok
    # Every row rewritten as if never keyed: the chain alone checks out, the anchors do not.
    tampering.rewrite_from(database_url, 1, unkeyed=True, detail={"n": -1})
    with store.read() as session:
        chain_only = verify_chain(session)
        anchored = verify_chain(session, anchors=anchors)
    assert chain_only.ok
    assert not anchored.ok and {p.kind for p in anchored.problems} == {"anchor"}
    assert anchored.first_problem is not None and anchored.first_problem.event_id == 1
    store.dispose()

    fresh = tmp_path / "fresh.log"
    store = _keyed_store(database_url, fresh)
    _write(store, 2, start=10)
    tampering.delete(database_url, 7)
    with store.read() as session:
        result = verify_chain(session, anchors=read_anchors(fresh))
    assert [p.kind for p in result.problems] == ["anchor"]
    assert "event 7" in result.problems[0].message
    store.dispose()


def test_anchors_are_throttled_and_flushed_when_the_store_closes(
    database_url: str, tmp_path: Path
) -> None:
    anchor_file = tmp_path / "anchors.log"
    store = Store(
        create_store_engine(database_url), audit_key=KEY, anchors=AnchorFile(anchor_file, 3600)
    )
    _write(store, 4)
    assert [a[0] for a in read_anchors(anchor_file)] == [1]
    store.dispose()
    assert [a[0] for a in read_anchors(anchor_file)] == [1, 4]


def test_the_audit_key_comes_from_the_setting_or_a_file_made_once(
    make_settings: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings: Settings = make_settings()  # type: ignore[operator]
    assert load_audit_key(settings, create=False) is None
    key = load_audit_key(settings)
    assert key is not None and len(key) >= 32
    assert load_audit_key(settings) == key
    assert (settings.data_dir / "audit.key").stat().st_mode & 0o077 == 0
    assert load_audit_key(make_settings(audit_key="s" * 20)) == b"s" * 20  # type: ignore[operator]
    with pytest.raises(ConfigError, match="CXR_AUDIT_KEY"):
        load_audit_key(make_settings(audit_key="short"))  # type: ignore[operator]
    bad = tmp_path / "bad.log"
    bad.write_text("not an anchor\n")
    with pytest.raises(ConfigError, match="bad.log:1"):
        read_anchors(bad)
