"""Engine and transactions for the one SQL store (SQLite on one machine, PostgreSQL in production).

The embedded SQLite file is shared by the gateway, the worker and the web processes, so it runs
in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE``: a
transaction that first reads and then writes can otherwise fail with "database is locked" when
another process wrote in between, whatever the busy timeout. Transient faults (a busy SQLite
file, a PostgreSQL restart, a serialization failure) are retried by :meth:`Store.run`; what is
left reaches callers as :class:`~governance.errors.StoreUnavailable`, never as a driver error.
A permanent error (a value too long for its column, a wrong type: a DataError or a
ProgrammingError) is :class:`~governance.errors.StoreRejected`: retrying it would fail again, so
nobody does.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cxr_triage.settings import Settings
from governance.audit_key import AnchorFile, load_audit_key
from governance.errors import (
    ConfigError,
    NotFound,
    SchemaOutOfDate,
    StoreRejected,
    StoreUnavailable,
)
from governance.events import discard_after_commit, run_after_commit

logger = logging.getLogger(__name__)

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000

#: The newest Alembic revision this code needs. Server processes refuse a store at another one
#: (a test keeps it equal to the head of ``migrations``, which governance may not import).
SCHEMA_REVISION = "0009"

#: ``Session.info`` keys: the audit chain's key and the anchor file of the store's sessions.
AUDIT_KEY_INFO = "cxr_audit_key"
AUDIT_ANCHORS_INFO = "cxr_audit_anchors"


def create_store_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url`` with the settings the store relies on.

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://...``. A plain
        ``postgresql://`` URL is taken to mean the psycopg 3 driver.

    Raises
    ------
    ConfigError
        The URL cannot be parsed or names a database we do not support.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"CXR_DATABASE_URL {url!r} is not a database URL "
            "(expected sqlite:///PATH or postgresql://USER@HOST/DB)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            folder = Path(database).expanduser().absolute().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the folder {folder} of the SQLite store: {exc}"
                ) from None
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)
    raise ConfigError(
        f"CXR_DATABASE_URL uses {backend!r}; cxr-triage supports sqlite and postgresql"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk when it returns, which is what a C-STORE Success promises.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is worth retrying (busy, disconnected, serialization).

    Data errors (class 22: a string too long, a number out of range), integrity and
    programming errors are permanent, whatever the driver's exception class.
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate:
        # 40001 serialization failure, 40P01 deadlock, 08xxx connection, 57P0x shutdown,
        # 53xxx insufficient resources (disk full, too many connections), 55P03 lock timeout.
        return sqlstate in {"40001", "40P01", "55P03"} or sqlstate[:2] in {"08", "57", "53"}
    return isinstance(exc, OperationalError)


def _store_error(exc: DBAPIError, what: str) -> StoreUnavailable | StoreRejected:
    if is_transient(exc):
        return StoreUnavailable(f"{what}: {_short(exc)}")
    return StoreRejected(f"{what} (permanent): {_short(exc)}")


class Store:
    """Sessions over one engine: short read sessions and retried write transactions.

    ``audit_key`` keys the audit chain of the events written through this store (HMAC-SHA256;
    None: plain SHA-256), ``anchors`` receives the chain's head after commits that audit. A
    server process builds its store with :meth:`from_settings`, which sets both.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        audit_key: bytes | None = None,
        anchors: AnchorFile | None = None,
    ) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.audit_key = audit_key
        self.anchors = anchors
        info = {AUDIT_KEY_INFO: audit_key, AUDIT_ANCHORS_INFO: anchors}
        write_bind = engine.execution_options(sqlite_immediate=True) if self.is_sqlite else engine
        self._read = sessionmaker(bind=engine, expire_on_commit=False, info=info)
        self._write = sessionmaker(bind=write_bind, expire_on_commit=False, info=info)

    @classmethod
    def from_url(cls, url: str) -> Store:
        """A store without the audit key (tools and tests; services use :meth:`from_settings`)."""
        return cls(create_store_engine(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store of a cxr-triage process: CXR_DATABASE_URL, the audit key and anchor file.

        Raises
        ------
        ConfigError
            The URL is wrong, or the audit key cannot be read or made.
        """
        return cls(
            create_store_engine(settings.database_url),
            audit_key=load_audit_key(settings),
            anchors=AnchorFile(settings.anchor_path, settings.audit_anchor_interval_s),
        )

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The process's store (:meth:`from_settings`), checked to be at :data:`SCHEMA_REVISION`.

        What every command and server opens, so that a store this code cannot use is refused
        before anything else happens.

        Raises
        ------
        ConfigError
            As :meth:`from_settings`.
        SchemaOutOfDate, StoreUnavailable
            See :meth:`check_schema`; the engine is disposed again.
        """
        store = cls.from_settings(settings)
        try:
            store.check_schema()
        except BaseException:
            store.dispose()
            raise
        return store

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; rolled back at the end. Driver errors become StoreUnavailable."""
        session = self._read()
        try:
            yield session
        except DBAPIError as exc:
            raise _store_error(exc, "the store did not answer") from exc
        finally:
            session.rollback()
            session.close()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        session = self._write()
        try:
            yield session
            session.commit()
        except IntegrityError:
            discard_after_commit(session)
            # A constraint said no: the caller's business (e.g. a concurrent insert), not an outage.
            session.rollback()
            raise
        except DBAPIError as exc:
            discard_after_commit(session)
            session.rollback()
            raise _store_error(exc, "the store did not take the write") from exc
        except BaseException:
            discard_after_commit(session)
            session.rollback()
            raise
        else:
            run_after_commit(session)
        finally:
            session.close()

    def run(self, work: Callable[[Session], T], *, attempts: int = 6) -> T:
        """Run ``work(session)`` in a write transaction, retrying transient faults with backoff.

        ``work`` must be safe to run again from the start (it sees a fresh session each time).
        """
        return self._retried(self.write, work, attempts)

    def query(self, query: Callable[[Session], T], *, attempts: int = 3) -> T:
        """Run ``query(session)`` in a read session, retrying a transient fault a few times.

        For a page or an API call, which is better answered a little late than with an error.
        """
        return self._retried(self.read, query, attempts)

    def _retried(
        self,
        open_session: Callable[[], AbstractContextManager[Session]],
        work: Callable[[Session], T],
        attempts: int,
    ) -> T:
        # A busy SQLite file or a PostgreSQL restart is tried again with a growing backoff
        # before StoreUnavailable reaches the caller; a permanent fault is raised at once.
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with open_session() as session:
                    return work(session)
            except StoreUnavailable as exc:
                cause = exc.__cause__
                if attempt == attempts or cause is None or not is_transient(cause):
                    raise
                logger.warning(
                    "store busy or unreachable (attempt %d/%d): %s",
                    attempt,
                    attempts,
                    _short(cause),
                )
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def has_table(self, name: str) -> bool:
        try:
            return inspect(self.engine).has_table(name)
        except DBAPIError as exc:
            raise StoreUnavailable(f"the store did not answer: {_short(exc)}") from exc

    def check_schema(self) -> None:
        """Raise SchemaOutOfDate unless the store is at :data:`SCHEMA_REVISION`."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    current = None
                else:
                    current = conn.exec_driver_sql(
                        "SELECT version_num FROM alembic_version"
                    ).scalar()
        except DBAPIError as exc:
            raise StoreUnavailable(f"the store did not answer: {_short(exc)}") from exc
        if current != SCHEMA_REVISION:
            raise SchemaOutOfDate(
                f"the store is at schema revision {current or 'none'}, this code needs "
                f"{SCHEMA_REVISION}: run `cxr-triage db upgrade`"
            )

    def dispose(self) -> None:
        if self.anchors is not None:
            self.anchors.flush()
        self.engine.dispose()


def get_row(session: Session, model: type[T], key: object, missing: str) -> T:
    """The ``model`` row with primary key ``key``; :class:`NotFound` saying ``missing`` if none."""
    row = session.get(model, key)
    if row is None:
        raise NotFound(missing)
    return row


def _short(exc: BaseException) -> str:
    """The first line of a driver error, without the SQL statement and its parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
