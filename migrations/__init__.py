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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from governance.db import create_store_engine
from governance.errors import StoreUnavailable
from migrations.roles import grant_app_role

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def alembic_config(url: str, app_role: str | None = None) -> Config:
    """An Alembic config for ``url`` without an alembic.ini (the URL may hold a password).

    ``app_role``: the PostgreSQL role the services connect as; revisions grant it what they
    need (:mod:`migrations.roles`).
    """
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["database_url"] = url
    config.attributes["app_role"] = app_role
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def upgrade(url: str, revision: str = "head", *, app_role: str | None = None) -> None:
    """Upgrade the store at ``url`` (the schema owner's URL) to ``revision``.

    With ``app_role`` (PostgreSQL), that role is then granted exactly what the services need on
    every table, including those this upgrade added (idempotent).
    """
    try:
        command.upgrade(alembic_config(url, app_role), revision)
        if app_role:
            engine = create_store_engine(url)
            try:
                with engine.begin() as conn:
                    grant_app_role(conn, app_role)
            finally:
                engine.dispose()
    except DBAPIError as exc:
        raise StoreUnavailable(
            f"cannot migrate the store: {str(exc.orig).splitlines()[0]}"
        ) from exc


def app_role_of(database_url: str, owner_url: str) -> str | None:
    """The services' role when it differs from the migrating owner's (PostgreSQL), else None."""
    app, owner = make_url(database_url), make_url(owner_url)
    if app.get_backend_name() != "postgresql" or not app.username:
        return None
    if app.username == owner.username:
        return None
    return app.username


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise StoreUnavailable(
            f"the store did not answer: {str(exc.orig).splitlines()[0]}"
        ) from exc
