"""The store on SQLite and PostgreSQL: schema from migrations, recording, concurrency, faults."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine
from governance.errors import (
    ConfigError,
    InstanceConflict,
    NotFound,
    StoreRejected,
    StoreUnavailable,
)
from governance.models import Base, Instance, Study
from governance.studies import (
    ReceivedInstance,
    find_study,
    get_study,
    record_instance,
    studies_awaiting_queue,
)
from governance.triage_results import mark_queued
from migrations import alembic_config


def item(
    study: str = "1.2.3", sop: str = "1.2.3.1", path: str = "/spool/a.dcm", **extra: object
) -> ReceivedInstance:
    values: dict[str, object] = dict(
        study_instance_uid=study,
        series_instance_uid="1.2.3.9",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=path,
        size_bytes=10,
        calling_ae="MODALITY",
        peer_address="127.0.0.1",
        modality="CR",
        view_position="PA",
        body_part="CHEST",
        patient_sex="F",
        patient_age_years=45,
    )
    values.update(extra)
    return ReceivedInstance(**values)  # type: ignore[arg-type]


def test_migrations_match_the_models(database_url: str) -> None:
    Store.from_url(database_url).check_schema()
    engine = create_store_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")
    store = Store.from_url(database_url)
    assert not store.has_table("studies")
    command.upgrade(alembic_config(database_url), "head")
    assert store.has_table("studies")
    store.dispose()


def test_record_instance_creates_study_and_replaces_resent_instance(store: Store) -> None:
    first, replaced = store.run(lambda s: record_instance(s, item()))
    assert replaced is None
    _, replaced = store.run(lambda s: record_instance(s, item(path="/spool/b.dcm")))
    assert replaced == "/spool/a.dcm"
    store.run(lambda s: record_instance(s, item(sop="1.2.3.2", path="/spool/c.dcm")))
    with store.read() as session:
        study = session.scalar(select(Study))
        assert study is not None
        assert [i.path for i in study.instances] == ["/spool/b.dcm", "/spool/c.dcm"]
        assert (study.patient_sex, study.patient_age_years) == ("F", 45)
        assert study.last_received_at >= study.first_received_at
        assert study.first_received_at.tzinfo is dt.UTC


def test_a_study_is_found_by_its_uid_or_not_found(store: Store) -> None:
    store.run(lambda s: record_instance(s, item()))
    with store.read() as session:
        found = find_study(session, "1.2.3")
        assert found is not None and found.study_instance_uid == "1.2.3"
        assert get_study(session, "1.2.3") is found
        assert find_study(session, "1.2.3.404") is None
        with pytest.raises(NotFound, match=r"^no study 1\.2\.3\.404$"):
            get_study(session, "1.2.3.404")


def test_queueing_state(store: Store) -> None:
    store.run(lambda s: record_instance(s, item()))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    with store.read() as session:
        assert studies_awaiting_queue(session, later) == ["1.2.3"]
    store.run(lambda s: mark_queued(s, ["1.2.3"], at=later))
    with store.read() as session:
        assert studies_awaiting_queue(session, later) == []
        assert session.scalar(select(Study.status)) == "queued"
    # A later instance makes the study wait for queueing again.
    store.run(
        lambda s: record_instance(
            s, item(sop="1.2.3.3", received_at=later + dt.timedelta(seconds=1))
        )
    )
    with store.read() as session:
        assert studies_awaiting_queue(session, later + dt.timedelta(seconds=2)) == ["1.2.3"]


def test_concurrent_writers_never_see_a_locked_store(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                received = item(study=f"1.2.{n}", sop=f"1.2.{n}.{i}", path=f"/spool/{n}/{i}")
                store.run(partial(record_instance, item=received))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 100


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    with store.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    store.dispose()


def test_sqlite_lock_held_elsewhere_is_waited_for(tmp_path: Path) -> None:
    from migrations import upgrade

    url = f"sqlite:///{tmp_path / 'y.db'}"
    upgrade(url)
    store = Store.from_url(url)
    other = sqlite3.connect(tmp_path / "y.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    timer = threading.Timer(0.5, lambda: other.execute("COMMIT"))  # ...for half a second
    timer.start()
    store.run(lambda s: record_instance(s, item()))
    timer.join()
    other.close()
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    store.dispose()


def test_unreachable_postgres_is_store_unavailable() -> None:
    store = Store.from_url("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable, match="did not"):
        store.run(lambda s: s.execute(text("SELECT 1")), attempts=2)


def test_a_read_is_tried_again_after_a_transient_fault(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'r.db'}")
    calls: list[int] = []

    def query(session: Session) -> int:
        calls.append(1)
        # SQLite answers a missing table with an OperationalError, the class of a busy file.
        table = "nothing" if len(calls) == 1 else "sqlite_master"
        return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    assert store.query(query) == 0
    assert len(calls) == 2
    with pytest.raises(ValueError, match="attempts"):
        store.query(query, attempts=0)
    store.dispose()


def test_unreachable_postgres_read_is_store_unavailable() -> None:
    store = Store.from_url("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable, match="did not"):
        store.query(lambda s: s.execute(text("SELECT 1")), attempts=2)


@pytest.mark.parametrize("url", ["nonsense", "mysql://x@y/z"])
def test_bad_database_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="CXR_DATABASE_URL"):
        create_store_engine(url)


def test_migration_0002_chains_existing_audit_rows_and_forbids_changes(
    tmp_path: Path, pg_databases: object
) -> None:
    from governance.models import GENESIS_HASH, AuditEvent

    for url in (f"sqlite:///{tmp_path / 'chain.db'}", pg_databases.create()):  # type: ignore[attr-defined]
        # A schema without the columns; drop what the fixture may have made and build 0001.
        command.upgrade(alembic_config(url), "0001")
        engine = create_store_engine(url)
        with engine.begin() as conn:
            for n in range(3):
                conn.execute(
                    text(
                        "INSERT INTO audit_events (occurred_at, actor, action, outcome, detail) "
                        "VALUES (:t, 'gateway', 'instances_received', 'success', :d)"
                    ),
                    {
                        "t": dt.datetime(2026, 1, 1, 12, n, tzinfo=dt.UTC).replace(
                            tzinfo=None if engine.dialect.name == "sqlite" else dt.UTC
                        ),
                        "d": f'{{"n": {n}}}',
                    },
                )
        command.upgrade(alembic_config(url), "head")
        store = Store(engine)
        with store.read() as session:
            events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
            prev = GENESIS_HASH
            for event in events:
                assert event.prev_hash == prev
                assert event.row_hash == event.compute_hash(prev)
                prev = event.row_hash
        assert len(events) == 3
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET actor = 'mallory'"))
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_events"))
        engine.dispose()


def test_schema_revision_constant_is_the_newest_migration() -> None:
    from governance.db import SCHEMA_REVISION
    from migrations import head_revision

    assert head_revision() == SCHEMA_REVISION


def test_server_processes_refuse_an_old_schema(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    from governance.errors import SchemaOutOfDate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = make_settings(database_url=url)
    store = Store.from_url(url)
    with pytest.raises(SchemaOutOfDate, match="none.*cxr-triage db upgrade"):
        store.check_schema()
    command.upgrade(alembic_config(url), "0001")
    with pytest.raises(SchemaOutOfDate, match="0001"):
        store.check_schema()
    with pytest.raises(SchemaOutOfDate, match="0001"):
        Store.open(settings)
    command.upgrade(alembic_config(url), "head")
    store.check_schema()
    store.dispose()
    Store.open(settings).dispose()


def test_text_over_its_column_is_stored_cut_not_refused(store: Store) -> None:
    long = "L" * 300 + "\x00\n"
    store.run(
        lambda s: record_instance(
            s,
            item(body_part=long, manufacturer=long, calling_ae="AE" * 20, peer_address=long),
        )
    )
    with store.read() as session:
        instance = session.scalar(select(Instance))
        assert instance is not None
        assert (instance.body_part, instance.manufacturer) == ("L" * 64, "L" * 64)
        assert instance.calling_ae == "AE" * 8
        assert instance.peer_address == "L" * 64


def test_a_sop_instance_uid_of_another_study_is_a_conflict_that_changes_nothing(
    store: Store,
) -> None:
    store.run(lambda s: record_instance(s, item(study="1.2.3", path="/spool/1.2.3/x.dcm")))
    with pytest.raises(InstanceConflict, match="already stored in study 1.2.3"):
        store.run(lambda s: record_instance(s, item(study="1.2.4", path="/spool/1.2.4/x.dcm")))
    with store.read() as session:
        assert [
            (i.study.study_instance_uid, i.path) for i in session.scalars(select(Instance))
        ] == [("1.2.3", "/spool/1.2.3/x.dcm")]
        assert session.scalar(select(Study).where(Study.study_instance_uid == "1.2.4")) is None


def test_a_permanent_error_is_not_retried_and_is_not_an_outage(store: Store) -> None:
    calls = []

    def too_long(session: Session) -> None:
        calls.append(1)
        session.add(Study(study_instance_uid="9" * 64, status="x" * 300))
        session.flush()

    if store.is_sqlite:
        pytest.skip("SQLite keeps over-long text; PostgreSQL refuses it (a DataError)")
    with pytest.raises(StoreRejected, match="permanent"):
        store.run(too_long)
    assert calls == [1]
