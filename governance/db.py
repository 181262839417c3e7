"""Engine and transactions for the one SQL store (SQLite on one machine, PostgreSQL in production).

The embedded SQLite file is shared by the gateway, the worker and the web processes, so it runs
in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE``: a
transaction that first reads and then writes can otherwise fail with "database is locked" when
another process wrote in between, whatever the busy timeout. Transient faults (a busy SQLite
file, a PostgreSQL restart, a serialization failure) are retried by :meth:`Store.run`; what is
left reaches callers as :class:`~governance.errors.StoreUnavailable`, never as a driver error.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from governance.errors import ConfigError, SchemaOutOfDate, StoreUnavailable
from governance.events import discard_after_commit, run_after_commit

logger = logging.getLogger(__name__)

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000

#: The newest Alembic revision this code needs. Server processes refuse a store at another one
#: (a test keeps it equal to the head of ``migrations``, which governance may not import).
SCHEMA_REVISION = "0008"


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
    """Whether a database error is worth retrying (busy, disconnected, serialization)."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
        # 40001 serialization failure, 40P01 deadlock, 08xxx connection, 57P0x shutdown.
        if sqlstate and (sqlstate in {"40001", "40P01"} or sqlstate[:2] in {"08", "57"}):
            return True
    return False


class Store:
    """Sessions over one engine: short read sessions and retried write transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        write_bind = engine.execution_options(sqlite_immediate=True) if self.is_sqlite else engine
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(bind=write_bind, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(create_store_engine(url))

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; rolled back at the end. Driver errors become StoreUnavailable."""
        session = self._read()
        try:
            yield session
        except DBAPIError as exc:
            raise StoreUnavailable(f"the store did not answer: {_short(exc)}") from exc
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
            raise StoreUnavailable(f"the store did not take the write: {_short(exc)}") from exc
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
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as session:
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
        self.engine.dispose()


def _short(exc: BaseException) -> str:
    """The first line of a driver error, without the SQL statement and its parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
