"""Alembic revisions of the store: the only way its schema changes.

``upgrade(url)`` brings a store to the newest revision (``cxr-triage db upgrade``). Whether a
process may start on a store is :meth:`governance.db.Store.check_schema` alone (against
``governance.db.SCHEMA_REVISION``, which a test holds equal to the head revision here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from governance.errors import StoreUnavailable

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` without an alembic.ini (the URL may hold a password)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["database_url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the store at ``url`` to ``revision``."""
    try:
        command.upgrade(alembic_config(url), revision)
    except DBAPIError as exc:
        raise StoreUnavailable(
            f"cannot migrate the store: {str(exc.orig).splitlines()[0]}"
        ) from exc


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise StoreUnavailable(
            f"the store did not answer: {str(exc.orig).splitlines()[0]}"
        ) from exc
