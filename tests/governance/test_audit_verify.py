"""The hash chain on SQLite and PostgreSQL: intact under concurrent writers, and every kind of
tampering (edit, delete, swap, truncate, rewrite) found and named by verify_chain."""

from __future__ import annotations

import datetime as dt
import threading
from functools import partial

import pytest
from sqlalchemy import func, select, text

from governance import audit
from governance.audit.verify import parse_anchor, verify_chain
from governance.db import Store, create_store_engine
from governance.models import GENESIS_HASH, AuditEvent
from tests.governance import tampering

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def fill(store: Store, count: int, *, per_transaction: int = 3) -> None:
    """``count`` events about studies, a few per transaction (as the gateway batches them)."""
    done = 0
    while done < count:
        batch = range(done, min(count, done + per_transaction))

        def work(session: object, batch: range = batch) -> None:
            for n in batch:
                audit.record(
                    session,  # type: ignore[arg-type]
                    actor=f"MODALITY{n % 3}",
                    actor_address="10.0.0.7",
                    action=audit.Action.INSTANCES_RECEIVED,
                    object_type="study",
                    object_uid=f"1.2.826.0.1.3680043.10.999.{n}",
                    occurred_at=T0 + dt.timedelta(seconds=n),
                    detail={"instances": n % 4 + 1, "tau": 0.1 * n},
                )

        store.run(work)
        done += len(batch)


def verify(store: Store, **kwargs: object):  # type: ignore[no-untyped-def]
    with store.read() as session:
        return verify_chain(session, **kwargs)  # type: ignore[arg-type]


def test_empty_trail_is_intact(store: Store) -> None:
    result = verify(store)
    assert result.ok and result.events == 0
    assert result.head_id is None and result.head_hash == GENESIS_HASH
    assert result.anchor == f"0:{GENESIS_HASH}"


def test_many_events_chain_intact_across_chunks(store: Store) -> None:
    fill(store, 40)
    result = verify(store, chunk_size=7)
    assert result.ok, result.problems
    assert result.events == 40 and result.head_id == 40
    with store.read() as session:
        last = session.get(AuditEvent, 40)
        assert last is not None and result.head_hash == last.row_hash
    assert verify(store, expect_head=result.anchor).ok
    assert verify(store, expect_head=result.head_hash).ok


def test_concurrent_writers_keep_the_chain_linear(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for n in range(25):
                store.run(
                    partial(
                        audit.record,
                        actor=f"writer-{number}",
                        action=audit.Action.QUERY,
                        detail={"n": n},
                    )
                )
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = verify(store)
    assert result.ok, result.problems
    assert result.events == 100 and result.head_id == 100
    with store.read() as session:
        counts = dict(
            session.execute(select(AuditEvent.actor, func.count()).group_by(AuditEvent.actor)).all()
        )
    assert counts == {f"writer-{i}": 25 for i in range(4)}


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "mallory"},
        {"detail": {"instances": 99, "tau": 0.5}},
        {"occurred_at": T0 + dt.timedelta(days=1)},
        {"outcome": "refused"},
    ],
    ids=["actor", "detail", "time", "outcome"],
)
def test_edited_row_is_named(store: Store, database_url: str, change: dict[str, object]) -> None:
    fill(store, 12)
    tampering.edit(database_url, 7, **change)
    result = verify(store)
    assert not result.ok
    first = result.first_problem
    assert first is not None and (first.event_id, first.kind) == (7, "edited")
    assert "event 7" in first.message and "hash" in first.message
    assert result.problem_count == 1  # later rows still link to the stored hash


def test_deleted_middle_row_is_named(store: Store, database_url: str) -> None:
    fill(store, 12)
    tampering.delete(database_url, 5)
    result = verify(store, chunk_size=4)
    first = result.first_problem
    assert first is not None and (first.event_id, first.kind) == (5, "deleted")
    assert "event 5 missing" in first.message
    assert result.events == 11


def test_deleted_run_of_rows_and_first_row_are_named(store: Store, database_url: str) -> None:
    fill(store, 12)
    tampering.delete(database_url, 1, 6, 7, 8)
    result = verify(store)
    assert [(p.event_id, p.kind) for p in result.problems] == [(1, "deleted"), (6, "deleted")]
    assert "events 6 to 8 missing" in result.problems[1].message


def test_deleted_last_row_is_found_only_with_an_anchor(store: Store, database_url: str) -> None:
    fill(store, 10)
    anchor = verify(store).anchor
    tampering.delete(database_url, 10)
    # The limitation the command documents: the chain alone still checks out.
    assert verify(store).ok
    with_id = verify(store, expect_head=anchor)
    first = with_id.first_problem
    assert first is not None and (first.event_id, first.kind) == (10, "anchor")
    assert "ends at event 9" in first.message
    hash_only = verify(store, expect_head=anchor.split(":", 1)[1])
    assert not hash_only.ok and hash_only.first_problem.event_id == 10  # type: ignore[union-attr]


def test_anchor_stays_valid_as_the_trail_grows(store: Store) -> None:
    fill(store, 5)
    anchor = verify(store).anchor
    fill(store, 5)
    result = verify(store, expect_head=anchor)
    assert result.ok and result.anchor_checked and result.events == 10


def test_swapped_rows_are_named(store: Store, database_url: str) -> None:
    fill(store, 12)
    tampering.swap(database_url, 4, 8)
    result = verify(store, chunk_size=5)
    first = result.first_problem
    assert first is not None and (first.event_id, first.kind) == (4, "reordered")
    assert "does not follow event 3" in first.message
    assert {p.event_id for p in result.problems} <= {4, 5, 8, 9}


def test_swapped_neighbours_are_named(store: Store, database_url: str) -> None:
    fill(store, 6)
    tampering.swap(database_url, 3, 4)
    first = verify(store).first_problem
    assert first is not None and (first.event_id, first.kind) == (3, "reordered")


def test_rewritten_trail_is_caught_by_the_anchor(store: Store, database_url: str) -> None:
    fill(store, 10)
    anchor = verify(store).anchor
    tampering.rewrite_from(database_url, 4, actor="mallory")
    assert verify(store).ok  # hashes recomputed: only an outside anchor can tell
    result = verify(store, expect_head=anchor)
    first = result.first_problem
    assert first is not None and (first.event_id, first.kind) == (10, "anchor")
    assert "rewritten" in first.message


def test_triggers_refuse_update_and_delete(store: Store, database_url: str) -> None:
    fill(store, 3)
    engine = create_store_engine(database_url)
    statements = ["UPDATE audit_events SET actor = 'mallory' WHERE id = 2",
                  "DELETE FROM audit_events WHERE id = 3"]  # fmt: skip
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()
    result = verify(store)
    assert result.ok and result.events == 3


def test_problems_are_capped_but_counted(store: Store, database_url: str) -> None:
    fill(store, 12)
    for event_id in (2, 4, 6, 8):
        tampering.edit(database_url, event_id, actor="mallory")
    result = verify(store, max_problems=2)
    assert result.problem_count == 4
    assert [p.event_id for p in result.problems] == [2, 4]
    assert result.to_dict()["first_bad_id"] == 2


@pytest.mark.parametrize("value", ["abc", "x:" + "a" * 64, "a" * 63, "12:" + "g" * 64])
def test_malformed_anchor_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="expect_head"):
        parse_anchor(value)


def test_anchor_forms() -> None:
    assert parse_anchor("A" * 64) == (None, "a" * 64)
    assert parse_anchor(f"17:{'b' * 64}") == (17, "b" * 64)
