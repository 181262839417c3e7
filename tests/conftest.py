"""Fixtures shared by the whole suite: explicit settings, stores on SQLite and PostgreSQL.

Store tests run on both backends: ``store`` is parametrized over ``sqlite`` and ``postgresql``
and gives each test a freshly migrated database of its own. PostgreSQL is the real server on
127.0.0.1:5432 (``.ci/run`` starts it); ``CXR_TEST_PG_URL`` points elsewhere.
``CXR_TEST_BACKENDS=sqlite`` narrows them to one backend: the Python 3.13 base-install job, whose
store tests repeat the full suite's (there one backend proves the install; the suite runs both).
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from cxr_triage.extras import EXTRAS, missing_modules
from cxr_triage.settings import Settings
from governance.db import Store, create_store_engine

pytest_plugins = ["tests.synthdata", "tests.peers", "tests.services"]

PG_ADMIN_URL = os.environ.get("CXR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CXR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_backends = os.environ.get("CXR_TEST_BACKENDS", "sqlite,postgresql")
BACKENDS = [b.strip() for b in _backends.split(",") if b.strip()]
if not BACKENDS or set(BACKENDS) - {"sqlite", "postgresql"}:
    raise pytest.UsageError(f"CXR_TEST_BACKENDS names sqlite and/or postgresql, not {BACKENDS!r}")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = random.Random()


def free_port() -> int:
    """A TCP port that nothing listens on right now, below the ephemeral range.

    A port the kernel picks (bind to 0) lies in the ephemeral range, where any outgoing
    connection may take it before the peer we start binds it (seen in CI: Orthanc's HTTP port
    "already in use"); ports below that range are only ever taken by a listener that asks.
    """
    low = max(1025, min(_ephemeral_low(), 65536) - 12000)
    high = max(low + 1000, min(_ephemeral_low(), 65536) - 1)
    for _ in range(200):
        port = _PORTS.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PgDatabases:
    """Creates throwaway PostgreSQL stores and removes them at the end of the session.

    Each store is a schema of its own in the ``test`` database, reached through a URL whose
    ``search_path`` names it: as isolated as a database for our purposes, and dropped in a
    millisecond where DROP DATABASE takes over a second.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        name = f"cxr_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_pg_conninfo(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        self.created.append(name)
        url = make_url(self.admin_url).set(
            drivername="postgresql+psycopg", query={"options": f"-csearch_path={name}"}
        )
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with psycopg.connect(_pg_conninfo(self.admin_url), autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    try:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} does not answer ({exc}); .ci/run starts it")
    databases = PgDatabases(PG_ADMIN_URL)
    yield databases
    databases.drop_all()


@pytest.fixture
def make_database_url(tmp_path: Path, pg_databases: PgDatabases) -> Callable[[str], str]:
    """Make a fresh, migrated database of the given backend and return its URL."""
    from migrations import upgrade

    def make(backend: str) -> str:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:6]}.db'}"
        elif backend == "postgresql":
            url = pg_databases.create()
        else:
            raise ValueError(f"backend must be sqlite or postgresql, got {backend!r}")
        upgrade(url)
        return url

    return make


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, make_database_url: Callable[[str], str]) -> str:
    """A fresh, migrated store URL; every test that uses it runs on both backends (see BACKENDS)."""
    return make_database_url(request.param)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A Store on a fresh, migrated database (SQLite and PostgreSQL)."""
    s = Store(create_store_engine(database_url))
    yield s
    s.dispose()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings explicitly (never from the environment) with a data dir under tmp_path."""

    def make(**overrides: object) -> Settings:
        # model_validate hands the mapping to Settings.__init__, so "_env_file": None keeps a
        # developer's .env out as Settings(_env_file=None, ...) does; pydantic checks the types.
        values: dict[str, object] = {
            "_env_file": None,
            "data_dir": tmp_path / "data",
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "web_port": free_port(),
            "queue": f"cxr-test-{uuid.uuid4().hex[:8]}",
        }
        values.update(overrides)
        return Settings.model_validate(values)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, the tests marked ``worker`` or ``train`` whose extra is missing."""
    missing = {extra: missing_modules(extra) for extra in EXTRAS}
    for item in items:
        for extra, modules in missing.items():
            if modules and item.get_closest_marker(extra) is not None:
                reason = f"needs the {extra!r} extra ({', '.join(modules)} not installed)"
                item.add_marker(pytest.mark.skip(reason=reason))
                break
